"""RMU (representation misdirection): push the forget rows' activations at one decoder layer toward c * u, a
fixed random unit vector, and - as a standalone method - hold the retain rows' activations there to the
frozen model's. Both are mean squared distances per hidden dimension over answer positions.

The layer is `rmu_layer` (0-based; default the middle one) and c is `rmu_coeff`; u is drawn once from the
run's seed. Under SGU the retain side is the retain NLL gradient, as for every objective.
"""

from __future__ import annotations

import torch

from sgu_llm.core.losses import IGNORE_INDEX, activation_distance
from sgu_llm.objectives.base import ForgetObjective


def steered_layer(model, args) -> int:
    """Index into `output_hidden_states` of the steered layer's output (0 is the embeddings)."""
    config = getattr(model, "config", None)
    layers = getattr(getattr(config, "get_text_config", lambda: config)(), "num_hidden_layers", None)
    if layers is None:
        raise ValueError("rmu needs a model whose config has num_hidden_layers (a decoder with layers)")
    layer = args.rmu_layer if args.rmu_layer is not None else layers // 2
    if layer >= layers:
        raise ValueError(f"rmu_layer={layer} but the model has {layers} decoder layers (0..{layers - 1})")
    return layer + 1


def answer_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["labels"].ne(IGNORE_INDEX)


class RMUObjective(ForgetObjective):
    name = "rmu"
    needs_reference = True

    def _direction(self, ctx, hidden: torch.Tensor) -> torch.Tensor:
        u = ctx.state.get("rmu_u")
        if u is None or u.shape[-1] != hidden.shape[-1]:
            gen = torch.Generator().manual_seed(self.args.seed)
            u = torch.rand(hidden.shape[-1], generator=gen)
            u = u / u.norm()
            ctx.state["rmu_u"] = u
        return (self.args.rmu_coeff * u).to(hidden.device, hidden.dtype)

    def _hidden(self, model, batch) -> torch.Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return out.hidden_states[steered_layer(model, self.args)]

    def forget_loss(self, ctx, model, batch):
        hidden = self._hidden(model, batch)
        loss = activation_distance(hidden, self._direction(ctx, hidden), answer_mask(batch))
        ctx.log("loss/rmu_forget", loss.sum(), len(loss))
        return loss

    def retain_loss(self, ctx, model, batch):
        hidden = self._hidden(model, batch)
        with torch.no_grad():
            out = ctx.reference(model, batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
            frozen = out.hidden_states[steered_layer(model, self.args)]
        loss = activation_distance(hidden, frozen, answer_mask(batch))
        ctx.log("loss/rmu_retain", loss.sum(), len(loss))
        return loss
