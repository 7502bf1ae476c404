"""LoRA (PEFT) and which parameters unlearn: wrapping the model and freezing the rest."""

from __future__ import annotations

import re
from typing import Any

import torch
from peft import PeftModel, get_peft_model


def is_peft_model(model: Any) -> bool:
    return isinstance(model, PeftModel)


def check_lora_targets(model: torch.nn.Module, peft_config: Any) -> None:
    """Name the model's linear layers when LoRA targets a module that does not exist."""
    targets = getattr(peft_config, "target_modules", None)
    if targets is None or isinstance(targets, str):  # a regex or "all-linear": PEFT resolves it
        return
    names = [n for n, _ in model.named_modules()]
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"LoRA target_modules {missing} match no module of {type(model).__name__}; its linear layers are "
            f"named {linear}. Set target_modules (lora_target_modules in a recipe) to some of those, or 'all-linear'."
        )


def prepare_model(model: Any, peft_config: Any = None, unlearn_params: str | None = None) -> Any:
    """Wrap with LoRA if asked, then freeze every parameter `unlearn_params` does not match."""
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("model is already a PeftModel; pass either a PeftModel or peft_config, not both")
        check_lora_targets(model, peft_config)
        model = get_peft_model(model, peft_config)
    if unlearn_params is not None:
        pattern = re.compile(unlearn_params)
        for name, p in model.named_parameters():
            if p.requires_grad and not pattern.search(name):
                p.requires_grad_(False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        sample = [n for n, _ in list(model.named_parameters())[:6]]
        raise ValueError(
            f"no trainable parameter is left (unlearn_params={unlearn_params!r}); parameter names look like "
            f"{sample}. Loosen the regex."
        )
    return model


