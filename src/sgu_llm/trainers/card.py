"""The model card every save writes next to an unlearned model (and `push_to_hub` publishes).

Example:
    >>> from sgu_llm.trainers import SGUConfig
    >>> text = build_card("sgu", SGUConfig(output_dir="out", report_to="none", hub_token="hf_secret"),
    ...                   base_model="HuggingFaceTB/SmolLM2-135M-Instruct", data="forget10 / retain90")
    >>> "hf_secret" in text, "- unlearning" in text, '"selective_function": "sgu"' in text
    (False, True, True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TAGS = ("unlearning", "sgu-llm")


def card_tags(method: str, extra: Sequence[str] | str | None = ()) -> list[str]:
    extra = [extra] if isinstance(extra, str) else list(extra or ())
    return list(dict.fromkeys([*TAGS, method, *extra]))


def build_card(
    method: str,
    config: Any,
    *,
    base_model: str | None = None,
    data: str | None = None,
    measured: str | None = None,
    tags: Sequence[str] | str | None = (),
) -> str:
    """README.md text: YAML metadata (tags, base model), the method, the data, measured numbers and the config.

    The configuration comes from `TrainingArguments.to_dict()`, which masks every `*_token` field.
    """
    from huggingface_hub import ModelCard, ModelCardData

    meta = ModelCardData(library_name="transformers", tags=card_tags(method, tags), base_model=base_model or None)
    cfg = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}
    lines = ["---", meta.to_yaml(), "---", f"# Unlearned with sgu-llm ({method})", ""]
    if base_model:
        lines += [f"Unlearned from `{base_model}`.", ""]
    if data:
        lines += [data, ""]
    if measured:
        lines += ["## Measured", "", measured, ""]
    lines += ["## Configuration", "", "```json", json.dumps(cfg, indent=2, sort_keys=True, default=str), "```", ""]
    return str(ModelCard("\n".join(lines)))
