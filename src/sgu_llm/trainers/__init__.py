"""Unlearning methods: one config dataclass and one trainer each, in a registry keyed by name.

Add a method with one file defining `MyConfig(UnlearnConfig)` / `MyTrainer(UnlearnTrainer)`
and one `register_method("my_method", MyConfig, MyTrainer)` line.

Example:
    >>> from sgu_llm.trainers import get_method
    >>> config_cls, trainer_cls = get_method("graddiff")
    >>> config_cls.__name__, trainer_cls.__name__
    ('GradDiffConfig', 'GradDiffTrainer')
"""

from __future__ import annotations

from sgu_llm.trainers.base import UnlearnTrainer
from sgu_llm.trainers.config import UnlearnConfig
from sgu_llm.trainers.graddiff import GradAscentConfig, GradAscentTrainer, GradDiffConfig, GradDiffTrainer
from sgu_llm.trainers.npo import NPOConfig, NPOTrainer, SimNPOConfig, SimNPOTrainer
from sgu_llm.trainers.objective import STANDALONE_CONFIGS, ObjectiveConfig, ObjectiveTrainer
from sgu_llm.trainers.sgu import SGUConfig, SGUTrainer

_METHODS: dict[str, tuple[type[UnlearnConfig], type[UnlearnTrainer]]] = {}


def register_method(name: str, config_cls: type[UnlearnConfig], trainer_cls: type[UnlearnTrainer]) -> None:
    """Register an unlearning method under a lowercase name."""
    key = name.lower()
    if key in _METHODS:
        raise ValueError(f"a method named {key!r} is already registered")
    if not (issubclass(config_cls, UnlearnConfig) and issubclass(trainer_cls, UnlearnTrainer)):
        raise TypeError("register_method needs an UnlearnConfig subclass and an UnlearnTrainer subclass")
    _METHODS[key] = (config_cls, trainer_cls)


def get_method(name: str) -> tuple[type[UnlearnConfig], type[UnlearnTrainer]]:
    try:
        return _METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(_METHODS)}") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)


register_method("sgu", SGUConfig, SGUTrainer)
register_method("gradascent", GradAscentConfig, GradAscentTrainer)
register_method("graddiff", GradDiffConfig, GradDiffTrainer)
register_method("npo", NPOConfig, NPOTrainer)
register_method("simnpo", SimNPOConfig, SimNPOTrainer)
for _name, _config in STANDALONE_CONFIGS.items():  # altpo, idknll, idkdpo, undial, rmu, whp, calibrated
    register_method(_name, _config, ObjectiveTrainer)

__all__ = [
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "NPOConfig",
    "NPOTrainer",
    "ObjectiveConfig",
    "ObjectiveTrainer",
    "SGUConfig",
    "SGUTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "UnlearnConfig",
    "UnlearnTrainer",
    "get_method",
    "list_methods",
    "register_method",
]
