"""Forget objectives: one file each, one registry keyed by lowercase name.

Each objective is a per-example loss on the forget rows (`ForgetObjective`), usable on its own (the
standalone methods of `sgu_llm.trainers.objective`: gamma * objective + alpha * retain term) and as SGU's
g_f (`SGUConfig(forget_loss=name)`: g_f is minus its gradient). Add one with a file defining a
`ForgetObjective` subclass and one `register_objective` line here.

Example:
    >>> from sgu_llm.objectives import get_objective, list_objectives
    >>> list_objectives()
    ['altpo', 'calibrated', 'idkdpo', 'idknll', 'nll', 'npo', 'rmu', 'undial', 'whp']
    >>> get_objective("altpo").needs_reference
    True
"""

from __future__ import annotations

from sgu_llm.objectives.altpo import AltPOObjective
from sgu_llm.objectives.base import ForgetObjective, ObjectiveArguments, ObjectiveContext
from sgu_llm.objectives.calibrated import CalibratedObjective
from sgu_llm.objectives.idkdpo import IdkDPOObjective
from sgu_llm.objectives.idknll import IdkNLLObjective
from sgu_llm.objectives.likelihood import NLLObjective, NPOObjective
from sgu_llm.objectives.rmu import RMUObjective
from sgu_llm.objectives.undial import UNDIALObjective
from sgu_llm.objectives.whp import WHPObjective

_OBJECTIVES: dict[str, type[ForgetObjective]] = {}


def register_objective(cls: type[ForgetObjective]) -> type[ForgetObjective]:
    """Register a `ForgetObjective` subclass under its lowercase `name` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, ForgetObjective)) or not cls.name:
        raise TypeError("register_objective needs a ForgetObjective subclass with a name")
    key = cls.name.lower()
    if key in _OBJECTIVES:
        raise ValueError(f"an objective named {key!r} is already registered")
    _OBJECTIVES[key] = cls
    return cls


def get_objective(name: str) -> type[ForgetObjective]:
    try:
        return _OBJECTIVES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown forget_loss {name!r}; registered objectives: {sorted(_OBJECTIVES)}") from None


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


for _cls in (
    NLLObjective,
    NPOObjective,
    AltPOObjective,
    IdkNLLObjective,
    IdkDPOObjective,
    UNDIALObjective,
    RMUObjective,
    WHPObjective,
    CalibratedObjective,
):
    register_objective(_cls)

__all__ = [
    "ForgetObjective",
    "ObjectiveArguments",
    "ObjectiveContext",
    "get_objective",
    "list_objectives",
    "register_objective",
]
