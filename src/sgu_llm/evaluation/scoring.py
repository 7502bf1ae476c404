"""The one scorer: per-answer-token log-probabilities without a (batch, length, vocabulary) softmax.

Every evaluation path (the TOFU suite, `answer_nll`, the fine-tuning's accuracy
check, the SAE probe and its causal check) scores answers here. For models whose
logits are `output_embeddings(final hidden state)` (Llama, Mistral, Qwen, GPT-2,
SmolLM2, ...) only the answer positions go through the output layer, in chunks of
`chunk_tokens` rows, so a 49k-token vocabulary costs chunk x vocabulary floats,
not batch x length x vocabulary. Other models (logit soft-capping or scaling)
get their full logits, and only the chunks are cast to float32.

Batches are sized by a token budget (padded length x rows), longest rows first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sgu_llm.core.losses import IGNORE_INDEX
from sgu_llm.data.pairing import pad_batch
from sgu_llm.evaluation.metrics import min_k

DEFAULT_TOKEN_BUDGET = 8192  # padded tokens per forward pass
DEFAULT_CHUNK_TOKENS = 1024  # answer positions per output-layer chunk


def token_budget_batches(lengths: list[int], token_budget: int, max_rows: int | None = None) -> list[list[int]]:
    """Index lists, longest rows first, each with (rows x longest length) <= `token_budget` (at least one row).

    Example:
        >>> token_budget_batches([3, 10, 4, 9], token_budget=20)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = lengths[cur[0]]  # the first row is the longest
            if (len(cur) + 1) * width <= token_budget and (max_rows is None or len(cur) < max_rows):
                cur.append(i)
                continue
        batches.append([i])
    return batches


def _head_from_hidden(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) when logits are output_layer(last hidden state) with nothing after it."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


@torch.no_grad()
def answer_token_scores(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    token_stats: bool = False,
    accuracy: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> dict[str, Any]:
    """Scores of the answer tokens (labels != -100, shifted for next-token prediction) of one padded batch.

    Returns `counts` (answer tokens per row) and flat per-token tensors in row order: `logp`
    (log-probability of the label), with `token_stats` also `z` (the Min-K%++ standardised log-prob:
    (logp - E[log p]) / std[log p] over the vocabulary), with `accuracy` also `correct` (argmax == label).
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    tgt = labels[:, 1:].to(device)
    valid = tgt.ne(IGNORE_INDEX)
    rows, cols = valid.nonzero(as_tuple=True)  # row-major: each row's tokens in order
    targets = tgt[rows, cols]
    parts = _head_from_hidden(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = hidden[:, :-1][rows, cols]

        def logits_of(sl: slice) -> torch.Tensor:
            return head(picked[sl]).float()
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        picked = logits[rows, cols]

        def logits_of(sl: slice) -> torch.Tensor:
            return picked[sl].float()

    n = targets.numel()
    out: dict[str, Any] = {"counts": valid.sum(-1).cpu(), "logp": torch.empty(n, device=device)}
    if token_stats:
        out["z"] = torch.empty(n, device=device)
    if accuracy:
        out["correct"] = torch.empty(n, dtype=torch.bool, device=device)
    for start in range(0, n, chunk_tokens):
        sl = slice(start, min(start + chunk_tokens, n))
        logits = logits_of(sl)
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, targets[sl].unsqueeze(-1)).squeeze(-1)
        out["logp"][sl] = logp
        if token_stats:
            p = logp_all.exp()
            mu = (p * logp_all).sum(-1)
            # Two passes (E[(log p - mu)^2]), not E[log p^2] - mu^2, which cancels in float32.
            sigma = (p * (logp_all - mu.unsqueeze(-1)).square()).sum(-1).clamp_min(1e-12).sqrt()
            out["z"][sl] = (logp - mu) / sigma
        if accuracy:
            out["correct"][sl] = logits.argmax(-1).eq(targets[sl])
        del logits, logp_all
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in out.items()}


@torch.no_grad()
def score_rows(
    model: Any,
    rows: list[dict[str, list[int]]],
    pad_token_id: int,
    *,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    max_rows: int | None = None,
    token_stats: bool = False,
    accuracy: bool = False,
    min_k_fraction: float = 0.4,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Per-row scores of tokenised rows (`input_ids`, `labels`): `nll` (mean answer-token NLL) and, as asked,
    `mink` / `minkpp` (Min-K% and Min-K%++ at `min_k_fraction`) and `correct` / `tokens` (argmax hits and
    answer-token counts). Rows keep their order; batches follow `token_budget_batches`.
    """
    was_training = model.training
    model.eval()
    n = len(rows)
    nll = np.zeros(n)
    mink, minkpp = np.zeros(n), np.zeros(n)
    correct, tokens = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    batches = token_budget_batches([len(r["input_ids"]) for r in rows], token_budget, max_rows)
    for idx in progress(batches) if progress else batches:
        batch = pad_batch([rows[i] for i in idx], pad_token_id)
        s = answer_token_scores(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            token_stats=token_stats,
            accuracy=accuracy,
        )
        counts = s["counts"].tolist()
        logps = s["logp"].double().split(counts)
        for j, i in enumerate(idx):
            nll[i] = -logps[j].sum().item() / max(counts[j], 1)
            tokens[i] = counts[j]
        if token_stats:
            for j, (lp, z) in enumerate(zip(logps, s["z"].split(counts))):
                mink[idx[j]] = min_k(lp.float().numpy(), min_k_fraction)
                minkpp[idx[j]] = min_k(z.numpy(), min_k_fraction)
        if accuracy:
            for j, c in enumerate(s["correct"].split(counts)):
                correct[idx[j]] = int(c.sum())
    model.train(was_training)
    out = {"nll": nll}
    if token_stats:
        out.update(mink=mink, minkpp=minkpp)
    if accuracy:
        out.update(correct=correct, tokens=tokens)
    return out
