"""The likelihood objectives SGU has always taken as g_f: `nll` (gradient ascent) and `npo`.

Both score rows through the trainer's task (`ctx.example_losses`), so they also unlearn an image classifier.
"""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.core.losses import npo_loss
from sgu_llm.objectives.base import ForgetObjective, ObjectiveContext


def forget_nll(ctx: ObjectiveContext, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's per-row loss (answer NLL for a causal LM) and units; logs `loss/forget` (the unit mean)."""
    nll, ntok = ctx.example_losses(model, batch)
    ctx.log("loss/forget", nll.sum(), ntok.sum())
    return nll, ntok


class NLLObjective(ForgetObjective):
    """Gradient ascent: minus the forget answers' NLL (a token mean over the window). Unbounded."""

    name = "nll"
    units = "tokens"

    def forget_loss(self, ctx, model, batch):
        nll, _ = forget_nll(ctx, model, batch)
        return -nll


class NPOObjective(ForgetObjective):
    """Length-normalised NPO, -(2 / npo_beta) log sigmoid(-npo_beta (logp - logp_ref)) per row with token-mean
    log-probabilities: its gradient equals the NLL's at the start and fades as the forget log-likelihood
    falls below the reference's, so SGU's reverse action cannot run away."""

    name = "npo"
    needs_reference = True

    def forget_loss(self, ctx, model, batch):
        nll, ntok = forget_nll(ctx, model, batch)
        ref_nll, _ = ctx.reference_losses(model, batch)
        logp, ref_logp = -nll / ntok.clamp_min(1), -ref_nll / ntok.clamp_min(1)
        return npo_loss(logp, ref_logp, self.args.npo_beta)
