"""The forget objectives on their own: gamma * objective(forget) + alpha * retain term, one method each.

`method: altpo` (idknll, idkdpo, undial, rmu, whp, calibrated) trains `sgu_llm.objectives`' objective of
that name the way the reference framework trains its methods: the objective on the forget batch plus
alpha times the retain NLL (RMU: its own retain term, the frozen model's activations held). The same
objective under SGU is `method: sgu` with `forget_loss: altpo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sgu_llm.objectives import ObjectiveArguments, get_objective
from sgu_llm.trainers.base import UnlearnTrainer
from sgu_llm.trainers.config import UnlearnConfig


@dataclass
class ObjectiveConfig(UnlearnConfig, ObjectiveArguments):
    """A forget objective on its own. Subclasses fix `forget_loss` to their method's objective."""

    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget objective."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (retain NLL; RMU: activations)."})

    objective_name = "nll"

    def __post_init__(self):
        super().__post_init__()
        get_objective(self.forget_loss)
        if self.forget_loss != self.objective_name:
            raise ValueError(
                f"method {self.objective_name!r} trains forget_loss {self.objective_name!r}, not {self.forget_loss!r}: "
                f"use method: {self.forget_loss} (or method: sgu with forget_loss: {self.forget_loss})"
            )
        self.check_objective()
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError(f"gamma and alpha must be >= 0, got {self.gamma} and {self.alpha}")


def _objective_field(name: str):
    return field(default=name, metadata={"help": f"The forget objective: {name!r} (fixed by the method)."})


@dataclass
class AltPOConfig(ObjectiveConfig):
    """AltPO: prefer self-generated alternatives over the true answer (DPO-style), plus alpha * retain NLL."""

    forget_loss: str = _objective_field("altpo")
    objective_name = "altpo"


@dataclass
class IdkNLLConfig(ObjectiveConfig):
    """IdkNLL: NLL of an "I don't know" answer on forget questions, plus alpha * retain NLL."""

    forget_loss: str = _objective_field("idknll")
    objective_name = "idknll"


@dataclass
class IdkDPOConfig(ObjectiveConfig):
    """IdkDPO: prefer "I don't know" over the true answer (DPO-style), plus alpha * retain NLL."""

    forget_loss: str = _objective_field("idkdpo")
    objective_name = "idkdpo"


@dataclass
class UNDIALConfig(ObjectiveConfig):
    """UNDIAL: self-distillation with the true token's logit lowered (reference: beta 10, lr 1e-4)."""

    forget_loss: str = _objective_field("undial")
    objective_name = "undial"


@dataclass
class RMUConfig(ObjectiveConfig):
    """RMU: forget activations at one layer pushed to c * u, retain activations held to the frozen model's."""

    forget_loss: str = _objective_field("rmu")
    objective_name = "rmu"


@dataclass
class WHPConfig(ObjectiveConfig):
    """Who's Harry Potter: NLL of generic labels from a reinforced model, plus alpha * retain NLL."""

    forget_loss: str = _objective_field("whp")
    objective_name = "whp"


@dataclass
class CalibratedConfig(ObjectiveConfig):
    """Calibrated margins: forget margins pulled to the holdout's distribution, plus alpha * retain NLL."""

    forget_loss: str = _objective_field("calibrated")
    objective_name = "calibrated"


STANDALONE_CONFIGS: dict[str, type[ObjectiveConfig]] = {
    c.objective_name: c
    for c in (AltPOConfig, IdkNLLConfig, IdkDPOConfig, UNDIALConfig, RMUConfig, WHPConfig, CalibratedConfig)
}


class ObjectiveTrainer(UnlearnTrainer):
    """gamma * (the objective's per-row losses over the window's tokens or rows) + alpha * retain term."""

    config_class = ObjectiveConfig

    @classmethod
    def needs_reference_model(cls, args):
        return get_objective(args.forget_loss).needs_reference

    @classmethod
    def method_tag(cls) -> str:
        return "objective"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sizes = self._sizes(num_items_in_batch, inputs)
        forget = self.objective_loss(model, inputs["forget"], sizes)
        retain_rows = self.objective.retain_loss(self.objective_ctx, model, inputs["retain"])
        if retain_rows is None:
            retain = self.nll_loss(model, inputs, "retain", sizes)
        else:
            retain = retain_rows.sum() / sizes["retain"][1]
        return self.args.gamma * forget + self.args.alpha * retain
