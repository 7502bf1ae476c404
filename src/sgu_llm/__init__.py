"""sgu-llm: Selective Gradient Unlearning for Hugging Face causal language models.

Heavy modules (transformers, peft, sae-lens) load only when you touch them, so
`import sgu_llm` stays fast.

Example:
    >>> import sgu_llm
    >>> sgu_llm.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily on first attribute access.
_LAZY = {
    "Action": "sgu_llm.selection",
    "sgu_select": "sgu_llm.selection",
    "register_selective_function": "sgu_llm.selection",
    "SGUConfig": "sgu_llm.trainers",
    "SGUTrainer": "sgu_llm.trainers",
    "UnlearnConfig": "sgu_llm.trainers",
    "UnlearnTrainer": "sgu_llm.trainers",
    "get_method": "sgu_llm.trainers",
    "list_methods": "sgu_llm.trainers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgu_llm' has no attribute {name!r}")
