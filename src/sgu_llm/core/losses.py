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


# ---- objectives that target knowledge (sgu_llm.objectives wires them) ------------------------------


def preference_loss(chosen_delta: torch.Tensor, rejected_delta: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO-style per-pair loss -(2 / beta) log sigmoid(beta (chosen_delta - rejected_delta)).

    Each delta is log pi_theta - log pi_ref of a whole answer (summed over its tokens). AltPO prefers a
    self-generated alternative (chosen) over the true answer (rejected); IdkDPO an "I don't know" answer.

    Example:
        >>> import torch
        >>> round(preference_loss(torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0).item(), 4)  # 2 ln 2
        1.3863
    """
    return -2.0 / beta * F.logsigmoid(beta * (chosen_delta - rejected_delta))


def undial_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """UNDIAL self-distillation: cross-entropy from softmax(ref_logits - beta * onehot(y)) to the model.

    Only answer positions count (labels != -100, after the causal shift): prompt and padding are masked.

    Returns:
        `(summed loss, answer tokens)` per example, both of shape (batch,).

    Example:
        >>> import torch
        >>> z = torch.zeros(1, 2, 2)  # uniform logits over 2 tokens at both positions
        >>> loss, n = undial_loss(z, z, torch.tensor([[-100, 0]]), beta=0.0)
        >>> round(loss.item(), 4), n.item()  # ln 2 at the one answer position
        (0.6931, 1)
    """
    shift_logits = logits[:, :-1, :].float()
    shift_ref = ref_logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    target = shift_ref - beta * F.one_hot(shift_labels.clamp_min(0), shift_ref.size(-1)).float()
    token_ce = -(target.softmax(-1) * shift_logits.log_softmax(-1)).sum(-1)
    return (token_ce * mask).sum(-1), mask.sum(-1)


def activation_distance(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean over masked positions of the squared distance ||hidden - target||^2 / hidden_size.

    `target` broadcasts against `hidden` (batch, length, hidden): RMU's forget term passes c * u (one vector),
    its retain term the frozen model's activations.

    Example:
        >>> import torch
        >>> h = torch.ones(1, 2, 4)
        >>> activation_distance(h, torch.zeros(4), torch.tensor([[True, False]])).tolist()
        [1.0]
    """
    per_position = (hidden.float() - target.float()).pow(2).mean(-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def generic_logits(base_logits: torch.Tensor, reinforced_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Who's-Harry-Potter generic predictions: v_base - alpha * ReLU(v_reinforced - v_base).

    Tokens a model trained further on the forget set (reinforced) boosts are the forget set's own; the
    generic logits take that boost away.

    Example:
        >>> import torch
        >>> generic_logits(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0]), alpha=1.0).tolist()
        [-1.0, 1.0]
    """
    return base_logits - alpha * F.relu(reinforced_logits - base_logits)


def answer_margins(
    true_logp: torch.Tensor, alt_logp: torch.Tensor, alt_row: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Per row: the true answer's log-probability minus the mean of its alternatives' (length-normalised).

    `alt_row[j]` is the row alternative j belongs to; a row without alternatives gets margin 0 - the
    truth ratio's sign convention: a positive margin ranks the true answer above the alternatives.

    Example:
        >>> import torch
        >>> answer_margins(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -5.0, -2.0]),
        ...                torch.tensor([0, 0, 1]), 2).tolist()
        [3.0, 0.0]
    """
    sums = torch.zeros(num_rows, dtype=alt_logp.dtype, device=alt_logp.device).index_add(0, alt_row, alt_logp)
    counts = torch.bincount(alt_row, minlength=num_rows).to(alt_logp.dtype)
    has = counts > 0
    mean_alt = torch.where(has, sums / counts.clamp_min(1), true_logp)
    return true_logp - mean_alt


def quantile_matching_loss(margins: torch.Tensor, reference_sorted: torch.Tensor) -> torch.Tensor:
    """Per-example squared distance of each margin to the reference quantile at the margin's rank.

    The batch's margins, ranked, are matched to the reference distribution's quantiles at levels
    (rank + 0.5) / n (linear interpolation): a one-dimensional optimal transport (Wasserstein-2) pull of the
    batch toward the reference distribution. Two-sided: margins above their quantile are pushed down,
    margins below it pulled up; zero where every margin already sits on its quantile. The reference carries
    no gradient.

    Example:
        >>> import torch
        >>> ref = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> quantile_matching_loss(torch.tensor([3.0, 0.0]), ref).tolist()  # levels 0.75 and 0.25
        [0.5625, 0.5625]
        >>> quantile_matching_loss(torch.tensor([2.25, 0.75]), ref).tolist()
        [0.0, 0.0]
    """
    ref = reference_sorted.detach().to(margins.dtype)
    n = margins.numel()
    ranks = torch.empty_like(margins, dtype=torch.long)
    ranks[torch.argsort(margins.detach())] = torch.arange(n, device=margins.device)
    position = (ranks.to(margins.dtype) + 0.5) / n * (ref.numel() - 1)
    low = position.floor().long().clamp(0, ref.numel() - 1)
    high = position.ceil().long().clamp(0, ref.numel() - 1)
    weight = position - low.to(margins.dtype)
    target = ref[low] * (1 - weight) + ref[high] * weight
    return (margins - target).pow(2)


def row_bands(start: torch.Tensor, reference: torch.Tensor, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's band of a reference distribution, assigned by rank: the row at rank r of `start` (n rows)
    gets the reference quantiles at levels (r + 0.5) / n -/+ width / 2 (clamped to [0, 1]).

    The row gate's aims (`row_gate`): `start` is the forget rows' answer NLL under the target before
    unlearning, `reference` the holdout rows' under the same frozen target - rows of the same kind it never
    trained on. If every row ends inside its band, the forget rows' distribution is the reference's (a
    monotone transport: the row the target knew best is aimed at the best-known unseen row).

    Example:
        >>> import torch
        >>> lo, hi = row_bands(torch.tensor([0.2, 0.1]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.5)
        >>> lo.tolist(), hi.tolist()  # levels 0.75 and 0.25, -/+ 0.25
        ([3.0, 1.0], [5.0, 3.0])
    """
    n = start.numel()
    ranks = torch.empty(n, dtype=torch.long)
    ranks[torch.argsort(start.detach().cpu())] = torch.arange(n)
    level = (ranks.double() + 0.5) / n
    ref = reference.detach().cpu().double()
    lo = torch.quantile(ref, (level - width / 2).clamp(0, 1))
    hi = torch.quantile(ref, (level + width / 2).clamp(0, 1))
    return lo.to(start.dtype), hi.to(start.dtype)


def row_gate_weights(score: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """SGU's three actions over forget rows: +1 (keep: the row's answer NLL is still below its band, the model
    still knows it), 0 (prune: inside the band) and -1 (reverse: past the band, overshot), per row.

    Example:
        >>> import torch
        >>> row_gate_weights(torch.tensor([0.5, 2.0, 9.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([3.0, 3.0, 3.0]))
        tensor([ 1.,  0., -1.])
    """
    score = score.detach()
    return (score < low).to(score.dtype) - (score > high).to(score.dtype)
