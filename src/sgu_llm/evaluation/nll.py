"""Per-example answer NLL over a tokenised dataset."""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.evaluation.scoring import score_rows


@torch.no_grad()
def answer_nll(model: Any, dataset: Any, pad_token_id: int, batch_size: int = 32) -> torch.Tensor:
    """Per-example mean answer-token NLL over a tokenised dataset (`input_ids`, `labels`).

    Example:
        >>> nll = answer_nll(model, tokenized_forget_set, tok.pad_token_id)  # doctest: +SKIP
        >>> probability = (-nll).exp().mean()  # doctest: +SKIP
    """
    rows = [dataset[i] for i in range(len(dataset))]
    return torch.from_numpy(score_rows(model, rows, pad_token_id, max_rows=batch_size)["nll"]).float()
