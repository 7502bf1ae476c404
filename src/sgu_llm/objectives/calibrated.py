"""The calibrated objective (ours): rank forget answers against alternatives the way the model ranks answers
it never saw.

Per row, the margin is the true answer's mean answer-token log-probability minus the mean of its
alternatives' (`answer_margins`; alternatives sampled from the model being unlearned, as for AltPO). The
holdout rows - of the same kind, never trained on, and not what forget quality is computed on - get
alternatives the same way; their margins under the current model, recomputed at the start and after every
epoch without gradients, are the reference distribution. Each forget batch's margins, ranked, are pulled to
the reference quantiles at their ranks (`quantile_matching_loss`): two-sided, so a row the model already
ranks like an unseen one is left alone, and a row pushed past it is pulled back. Gradients flow through the
forget rows (true answers and alternatives) only.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from sgu_llm.core.losses import answer_margins, quantile_matching_loss
from sgu_llm.data.pairing import collate_rows, prepare_qa_dataset
from sgu_llm.objectives.base import (
    ForgetObjective,
    sequence_logps,
    sub_batch,
    training_answers,
    with_alternatives,
)

HOLDOUT_BATCH = 32


def margins_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Margins of the rows of a collated batch with an `alternatives_*` set."""
    true_lp, n = sequence_logps(model, batch)
    true_mean = true_lp / n.clamp_min(1)
    if "alternatives_row" not in batch:
        return true_mean * 0.0
    alt_lp, alt_n = sequence_logps(model, sub_batch(batch, "alternatives_"))
    return answer_margins(true_mean, alt_lp / alt_n.clamp_min(1), batch["alternatives_row"], len(true_mean))


@torch.no_grad()
def holdout_margins(model, rows: list[dict], pad_id: int) -> torch.Tensor:
    """Margins of the tokenised holdout rows (with alternatives) under `model`, sorted, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), HOLDOUT_BATCH):
        batch = collate_rows(rows[start : start + HOLDOUT_BATCH], pad_id)
        out.append(margins_of(model, {k: v.to(device) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    return torch.sort(torch.cat(out)).values


class HoldoutMarginCallback(TrainerCallback):
    """Recompute the holdout margins at the start and after every epoch (into `ctx.state`)."""

    def __init__(self, ctx, rows: list[dict]):
        self.ctx, self.rows = ctx, rows

    def _refresh(self, model) -> None:
        margins = holdout_margins(model, self.rows, self.ctx.tokenizer.pad_token_id)
        self.ctx.state["holdout_margins"] = margins
        self.ctx.log("calibrated/holdout_margin_median", float(margins.median()))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._refresh(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._refresh(model)


class CalibratedObjective(ForgetObjective):
    name = "calibrated"
    answer_sets = ("alternatives",)
    needs_holdout = True

    def prepare_rows(self, ctx, model, forget, retain, holdout):
        if holdout is None or len(holdout) == 0:
            raise ValueError(
                "forget_loss='calibrated' needs holdout rows (question/answer pairs of the same kind that no model "
                "trained on, e.g. TOFU-style holdout authors): pass holdout_dataset= to the trainer, or "
                "holdout_split in a recipe"
            )
        corpus = training_answers(forget, retain)
        forget = with_alternatives(ctx, model, forget, corpus, "forget")
        held = with_alternatives(ctx, model, holdout, corpus, "holdout")
        a = self.args
        tokenized = prepare_qa_dataset(
            held, ctx.tokenizer, "holdout", a.prompt_format, a.max_length, a.system_prompt, ("alternatives",)
        )
        ctx.state["holdout_rows"] = tokenized.to_list()
        return forget

    def callbacks(self, ctx):
        return [HoldoutMarginCallback(ctx, ctx.state["holdout_rows"])]

    def forget_loss(self, ctx, model, batch):
        if "holdout_margins" not in ctx.state:  # called outside Trainer.train (no callback ran yet)
            ctx.state["holdout_margins"] = holdout_margins(model, ctx.state["holdout_rows"], ctx.tokenizer.pad_token_id)
        margins = margins_of(model, batch)
        ctx.log("calibrated/forget_margin", margins.detach().sum(), len(margins))
        return quantile_matching_loss(margins, ctx.state["holdout_margins"].to(margins.device))

