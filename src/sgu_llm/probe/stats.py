"""Pure tensor functions of the probe: feature statistics, selection and state classification."""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATES = ("maintained", "pruned", "reversed", "collateral")


@dataclass
class FeatureStats:
    """Per-feature statistics of one set at one probe step (all shape (d_sae,))."""

    freq: torch.Tensor  # fraction of tokens where the feature fires
    mean_act: torch.Tensor  # mean post-activation over tokens
    mean_pre: torch.Tensor  # mean pre-activation over all tokens
    start_pre: torch.Tensor  # mean pre-activation over the tokens where it fired at the first probe


def feature_stats(
    acts: torch.Tensor, pre: torch.Tensor, start_mask: torch.Tensor | None = None
) -> FeatureStats:
    """Statistics of SAE features over tokens. `acts`/`pre` are (tokens, d_sae)."""
    fired = acts > 0
    mask = fired if start_mask is None else start_mask
    n = mask.sum(0).clamp_min(1)
    return FeatureStats(
        freq=fired.float().mean(0),
        mean_act=acts.mean(0),
        mean_pre=pre.mean(0),
        start_pre=(pre * mask).sum(0) / n,
    )


def select_forget_features(
    forget: FeatureStats,
    retain: FeatureStats,
    percentile: float = 90.0,
    min_freq: float = 0.01,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Indices of forget-specific features, as the SAE-unlearning literature picks them.

    A feature qualifies when it fires on at least `min_freq` of forget tokens and
    its forget/retain mean-activation ratio is above the `percentile` of that
    ratio over the features that fire on the forget set.
    """
    active = forget.freq >= min_freq
    if not active.any():
        return torch.zeros(0, dtype=torch.long)
    ratio = forget.mean_act / (retain.mean_act + eps)
    cut = torch.quantile(ratio[active].float(), percentile / 100.0)
    return torch.nonzero(active & (ratio >= cut)).flatten()


def classify(
    start_forget: FeatureStats,
    start_retain: FeatureStats,
    now_forget: FeatureStats,
    now_retain: FeatureStats,
    *,
    prune_ratio: float = 0.3,
    collateral_ratio: float = 0.5,
    reverse_margin: float = 0.5,
    eps: float = 1e-6,
) -> list[str]:
    """State of every feature now, against its start.

    - reversed: its mean pre-activation on the forget tokens where it fired at the
      start is now pushed below zero, past `-reverse_margin` times its start value
      (post-activations are non-negative, so reversal is only visible before the
      ReLU; a feature that just stops firing is pruned, not reversed);
    - pruned: forget activation fell below `prune_ratio` of its start while the
      retain activation stayed within `collateral_ratio` of its start;
    - collateral: the retain activation moved by more than `collateral_ratio` of
      its start (or of the forget start when retain was ~0) without the above;
    - maintained: otherwise.

    Example:
        >>> import torch
        >>> z = torch.zeros(2)
        >>> s = FeatureStats(torch.ones(2), torch.tensor([1.0, 1.0]), z, torch.tensor([1.0, 1.0]))
        >>> now = FeatureStats(torch.ones(2), torch.tensor([0.1, 0.0]), z, torch.tensor([-0.2, -0.8]))
        >>> classify(s, s, now, s)
        ['pruned', 'reversed']
    """
    base = torch.maximum(start_retain.mean_act, 0.1 * start_forget.mean_act) + eps
    retain_moved = (now_retain.mean_act - start_retain.mean_act).abs() > collateral_ratio * base
    reversed_ = now_forget.start_pre < -reverse_margin * start_forget.start_pre.abs()
    pruned = (now_forget.mean_act < prune_ratio * start_forget.mean_act) & ~retain_moved
    states = []
    for r, p, c in zip(reversed_.tolist(), pruned.tolist(), retain_moved.tolist()):
        states.append("reversed" if r else "pruned" if p else "collateral" if c else "maintained")
    return states
