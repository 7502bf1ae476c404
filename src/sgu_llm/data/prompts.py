"""Prompt formats and QA tokenisation with the question masked out of the loss."""

from __future__ import annotations

from typing import Any

from sgu_llm.core.losses import IGNORE_INDEX

PROMPT_FORMATS = ("phi", "llama2", "chat_template")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def build_prompt(
    question: str, tokenizer: Any = None, prompt_format: str = "phi", system_prompt: str | None = None
) -> str:
    """The text before the answer, in one of `PROMPT_FORMATS`.

    - `phi`: "Question: {q}\\nAnswer: " (Phi-1.5 in TOFU);
    - `llama2`: "[INST] {q} [/INST]" (Llama-2-chat in TOFU);
    - `chat_template`: the tokenizer's chat template with a system prompt and
      the generation prompt appended.

    Example:
        >>> build_prompt("Who wrote it?")
        'Question: Who wrote it?\\nAnswer: '
    """
    if prompt_format == "phi":
        return f"Question: {question}\nAnswer: "
    if prompt_format == "llama2":
        return f"[INST] {question} [/INST]"
    if prompt_format == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_format='chat_template' needs a tokenizer with a chat template; "
                "use prompt_format='phi' or 'llama2' for base models"
            )
        messages = [{"role": "user", "content": question}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")


def tokenize_qa(
    tokenizer: Any,
    question: str,
    answer: str,
    prompt_format: str = "phi",
    max_length: int = 512,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> dict[str, list[int]]:
    """Tokenise prompt + answer + EOS; labels are -100 on the prompt tokens.

    With a fast tokenizer the answer tokens are found from character offsets;
    otherwise, as in the reference framework, from the prompt's token count.
    The sequence is cut at `max_length`.

    Example:
        >>> from sgu_llm.models.tiny import train_tokenizer
        >>> tok = train_tokenizer(["Question: a\\nAnswer: b"] * 4, vocab_size=64)
        >>> row = tokenize_qa(tok, "a", "b")
        >>> row["labels"][-1] == tok.eos_token_id and row["labels"][0] == -100
        True
    """
    prompt = build_prompt(question, tokenizer, prompt_format, system_prompt)
    # Chat templates already carry BOS and friends; the plain formats get the tokenizer's specials.
    add_special = prompt_format != "chat_template"
    if getattr(tokenizer, "is_fast", False):
        # A token is an answer token if it covers any answer character. Counting the prompt's tokens
        # alone (the reference framework's way) mislabels a token that merges across the boundary,
        # e.g. a Metaspace "▁Name" made of the prompt's trailing space and the answer's first word.
        enc = tokenizer(prompt + answer, add_special_tokens=add_special, return_offsets_mapping=True)
        full_ids = list(enc["input_ids"])
        is_answer = [end > len(prompt) for _, end in enc["offset_mapping"]]
    else:
        n_prompt = len(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        full_ids = list(tokenizer(prompt + answer, add_special_tokens=add_special)["input_ids"])
        is_answer = [i >= n_prompt for i in range(len(full_ids))]
    if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
        full_ids.append(tokenizer.eos_token_id)
        is_answer.append(True)
    full_ids, is_answer = full_ids[:max_length], is_answer[:max_length]
    labels = [t if a else IGNORE_INDEX for t, a in zip(full_ids, is_answer)]
    return {"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels}
