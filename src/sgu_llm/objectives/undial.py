"""UNDIAL: self-distil toward the frozen start's distribution with the true token's logit lowered by
`undial_beta` (softmax(z_ref - beta * onehot(y))), at answer positions only (a token mean)."""

from __future__ import annotations

import torch

from sgu_llm.core.losses import undial_loss
from sgu_llm.objectives.base import ForgetObjective


class UNDIALObjective(ForgetObjective):
    name = "undial"
    units = "tokens"
    needs_reference = True

    def forget_loss(self, ctx, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with torch.no_grad():
            ref_logits = ctx.reference(model, batch["input_ids"], batch["attention_mask"]).logits
        loss, n = undial_loss(logits, ref_logits, batch["labels"], self.args.undial_beta)
        ctx.log("loss/undial", loss.sum(), n.sum())
        return loss
