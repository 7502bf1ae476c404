"""Checks that a model fits what unlearning asks of it: next-token logits, and rows that fit its context."""

from __future__ import annotations

from typing import Any


def check_causal_lm(model: Any) -> None:
    """Unlearning needs next-token logits: refuse a model without a language-model head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"the model is a {type(model).__name__}, which has no language-model head (no next-token logits): "
            "load it with AutoModelForCausalLM.from_pretrained (or pass a *ForCausalLM model)"
        )


def check_fits_context(model: Any, sets: dict[str, Any]) -> None:
    """Refuse rows longer than the model's context (position embeddings), naming max_length as the fix."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit:
        return
    for name, ds in sets.items():
        longest = max(len(ids) for ids in ds["input_ids"])
        if longest > limit:
            raise ValueError(
                f"the {name} set has rows of {longest} tokens but the model's context is {limit} tokens: set "
                f"max_length to at most {limit} (rows are cut there) or use shorter rows"
            )
