"""NPO and SimNPO: bounded forget losses plus the retain NLL."""

from __future__ import annotations

from dataclasses import dataclass, field

from sgu_llm.core.losses import npo_loss, simnpo_loss
from sgu_llm.trainers.base import UnlearnTrainer
from sgu_llm.trainers.config import UnlearnConfig


@dataclass
class NPOConfig(UnlearnConfig):
    """NPO: gamma * NPO(forget; reference) + alpha * NLL_retain (reference defaults beta 0.1, alpha = gamma = 1)."""

    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the NPO forget term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


class NPOTrainer(UnlearnTrainer):
    """NPO with sequence-summed log-probabilities and a frozen reference model.

    Under LoRA the reference is the same model with its adapters disabled;
    otherwise a frozen copy of the starting weights (or `ref_model`).
    """

    config_class = NPOConfig

    @classmethod
    def needs_reference_model(cls, args):
        return True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        nll, _ = self.forward_nll(model, inputs["forget"], "forget")
        ref_nll, _ = self.reference_nll(model, inputs["forget"])
        forget = npo_loss(-nll, -ref_nll, self.args.beta).sum() / sizes["forget"][1]
        self._metrics.add("loss/npo", forget.detach() * sizes["forget"][1], len(nll))
        retain = self.nll_loss(model, inputs, "retain", sizes)
        return self.args.gamma * forget + self.args.alpha * retain


@dataclass
class SimNPOConfig(UnlearnConfig):
    """SimNPO: gamma * SimNPO(forget) + alpha * NLL_retain (reference defaults beta 4.5, delta 0, gamma 0.125)."""

    beta: float = field(default=4.5, metadata={"help": "SimNPO inverse temperature."})
    delta: float = field(default=0.0, metadata={"help": "SimNPO reward margin."})
    gamma: float = field(default=0.125, metadata={"help": "Weight of the SimNPO forget term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


class SimNPOTrainer(UnlearnTrainer):
    """SimNPO: NPO without a reference model, on the length-normalised forget NLL."""

    config_class = SimNPOConfig

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        nll, ntok = self.forward_nll(model, inputs["forget"], "forget")
        per_example = simnpo_loss(nll / ntok.clamp_min(1), self.args.beta, self.args.delta)
        forget = per_example.sum() / sizes["forget"][1]
        retain = self.nll_loss(model, inputs, "retain", sizes)
        return self.args.gamma * forget + self.args.alpha * retain
