"""GradAscent and GradDiff: ascend the forget NLL, optionally descend the retain NLL."""

from __future__ import annotations

from dataclasses import dataclass, field

from sgu_llm.trainers.base import UnlearnTrainer
from sgu_llm.trainers.config import UnlearnConfig


@dataclass
class GradAscentConfig(UnlearnConfig):
    """Gradient ascent on the forget set: minimise -NLL_forget. The retain batch is not used."""


class GradAscentTrainer(UnlearnTrainer):
    config_class = GradAscentConfig

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        return -self.nll_loss(model, inputs, "forget", sizes)


@dataclass
class GradDiffConfig(UnlearnConfig):
    """GradDiff: gamma * (-NLL_forget) + alpha * NLL_retain (reference defaults gamma = alpha = 1)."""

    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget (ascent) term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})


class GradDiffTrainer(UnlearnTrainer):
    config_class = GradDiffConfig

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        forget = self.nll_loss(model, inputs, "forget", sizes)
        retain = self.nll_loss(model, inputs, "retain", sizes)
        return -self.args.gamma * forget + self.args.alpha * retain
