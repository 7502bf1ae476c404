"""Per-example answer NLL over a tokenised dataset."""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.data.pairing import pad_batch
from sgu_llm.losses import per_example_nll


@torch.no_grad()
def answer_nll(model: Any, dataset: Any, pad_token_id: int, batch_size: int = 32) -> torch.Tensor:
    """Per-example mean answer-token NLL over a tokenised dataset (`input_ids`, `labels`).

    Example:
        >>> nll = answer_nll(model, tokenized_forget_set, tok.pad_token_id)  # doctest: +SKIP
        >>> probability = (-nll).exp().mean()  # doctest: +SKIP
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = pad_batch(
            [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pad_token_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, ntok = per_example_nll(logits, batch["labels"])
        out.append((nll / ntok.clamp_min(1)).cpu())
    model.train(was_training)
    return torch.cat(out)
