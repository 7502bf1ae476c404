"""A saved model folder (save_pretrained: a full model, or a LoRA adapter over its base) and its tokenizer."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from sgu_llm.models.clamp import load_clamp


def load_saved_model(path: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a folder written by `save_pretrained` (an adapter folder loads with its base), with
    the SAE clamp saved beside it when there is one (`sgu_llm.models.clamp`: the `sae_clamp` method)."""
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    load_clamp(model, path)
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
