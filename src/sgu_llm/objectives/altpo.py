"""AltPO: prefer the model's own alternative answers over the true one, DPO-style against the frozen start.

Per forget row and each of its alternatives a: -(2 / beta) log sigmoid(beta [D(a) - D(true)]) with
D = log pi_theta - log pi_ref summed over the answer's tokens; the row's loss is the mean over its
alternatives. Alternatives come from `sgu_llm.data.alternatives` (the model being unlearned, seeded,
cached by its weights); a forget set that already has an `alternatives` column is used as it is.
"""

from __future__ import annotations

import torch

from sgu_llm.core.losses import preference_loss
from sgu_llm.objectives.base import (
    ForgetObjective,
    row_mean,
    sequence_logps,
    sub_batch,
    training_answers,
    with_alternatives,
)


class AltPOObjective(ForgetObjective):
    name = "altpo"
    answer_sets = ("alternatives",)
    needs_reference = True

    def prepare_rows(self, ctx, model, forget, retain, holdout):
        return with_alternatives(ctx, model, forget, training_answers(forget, retain), "forget")

    def forget_loss(self, ctx, model, batch):
        true_lp, ntok = sequence_logps(model, batch)
        ctx.log("loss/forget", -true_lp.sum(), ntok.sum())
        if "alternatives_row" not in batch:  # no row of this batch has an alternative
            return true_lp * 0.0
        alts = sub_batch(batch, "alternatives_")
        alt_lp, _ = sequence_logps(model, alts)
        with torch.no_grad():
            ref_true = ctx.reference_logps(model, batch)
            ref_alt = ctx.reference_logps(model, alts)
        row = batch["alternatives_row"]
        pairs = preference_loss(alt_lp - ref_alt, (true_lp - ref_true)[row], self.args.pref_beta)
        return row_mean(pairs, row, len(true_lp)) + 0.0 * true_lp
