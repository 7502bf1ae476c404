"""IdkDPO: prefer an "I don't know" answer over the true one, DPO-style against the frozen start
(-(2 / beta) log sigmoid(beta [D(idk) - D(true)]), D = log pi_theta - log pi_ref summed over tokens)."""

from __future__ import annotations

import torch

from sgu_llm.core.losses import preference_loss
from sgu_llm.objectives.base import ForgetObjective, sequence_logps, sub_batch, with_idk


class IdkDPOObjective(ForgetObjective):
    name = "idkdpo"
    answer_sets = ("idk",)
    needs_reference = True

    def prepare_rows(self, ctx, model, forget, retain, holdout):
        return with_idk(ctx, forget)

    def forget_loss(self, ctx, model, batch):
        idk = sub_batch(batch, "idk_")
        true_lp, ntok = sequence_logps(model, batch)
        idk_lp, _ = sequence_logps(model, idk)
        ctx.log("loss/forget", -true_lp.sum(), ntok.sum())
        with torch.no_grad():
            ref_true, ref_idk = ctx.reference_logps(model, batch), ctx.reference_logps(model, idk)
        return preference_loss(idk_lp - ref_idk, true_lp - ref_true, self.args.pref_beta)
