"""Data: prompt formats, QA tokenisation, forget/retain pairing and the synthetic TOFU set."""

from sgu_llm.data.pairing import (
    ForgetRetainCollator,
    ForgetRetainDataset,
    pad_batch,
    prepare_qa_dataset,
)
from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, PROMPT_FORMATS, build_prompt, tokenize_qa

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "PROMPT_FORMATS",
    "ForgetRetainCollator",
    "ForgetRetainDataset",
    "build_prompt",
    "pad_batch",
    "prepare_qa_dataset",
    "tokenize_qa",
]
