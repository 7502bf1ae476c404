"""Tiny models and tokenizers built locally: what tests, CI and the demo run on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Any:
    """Train a small byte-level-free BPE tokenizer (Metaspace) on `texts`.

    Sub-word, not word-level: names that appear only in a forget set are still
    spelled with pieces the retain set shares, so forgetting is not trivial.

    Example:
        >>> tok = train_tokenizer(["the cat sat", "the dog sat"], vocab_size=40)
        >>> tok.decode(tok("the cat")["input_ids"], skip_special_tokens=True)
        'the cat'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tiny_llama(
    tokenizer: Any, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> Any:
    """A randomly initialised Llama sized for CPU tests (tied embeddings).

    Example:
        >>> tok = train_tokenizer(["a b c"], vocab_size=30)
        >>> tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2).config.hidden_size
        16
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
