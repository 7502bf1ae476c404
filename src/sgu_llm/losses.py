"""Loss functions as pure tensor code: per-example NLL and the baselines' forget losses.

All functions take logits and labels (labels use -100 for positions outside the
answer, as everywhere in sgu_llm) and return *per-example* values, so the
trainer can normalise over a whole gradient-accumulation window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the answer tokens of each example, and their count.

    Logits at position t predict the token at t + 1 (the causal-LM shift), and
    the NLL is computed in float32 whatever the logits' dtype.

    Returns:
        `(nll_sum, num_tokens)`, both of shape (batch,).

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> nll, n = per_example_nll(logits, torch.tensor([[-100, 1, 2]]))
        >>> round(nll.item() / n.item(), 4)  # ln 4
        1.3863
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels.ne(IGNORE_INDEX)
    return (token_nll * mask).sum(-1), mask.sum(-1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example NPO loss -(2 / beta) log sigmoid(-beta (logp - ref_logp)).

    `logp` and `ref_logp` are sequence log-probabilities (summed over answer
    tokens) under the trained and the frozen reference model. The loss is
    bounded below by 0 as logp falls under ref_logp, unlike gradient ascent.
    """
    return -2.0 / beta * F.logsigmoid(-beta * (logp - ref_logp))


def simnpo_loss(nll_mean: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """Per-example SimNPO loss -(2 / beta) log sigmoid(beta (nll_mean - delta)).

    `nll_mean` is the length-normalised NLL of each forget example; no
    reference model is needed.
    """
    return -2.0 / beta * F.logsigmoid(beta * (nll_mean - delta))
