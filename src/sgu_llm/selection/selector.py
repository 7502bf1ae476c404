"""Apply a selective function to every selected parameter tensor, with statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgu_llm.selection.rules import get_selective_function
from sgu_llm.selection.thresholds import (
    DEFAULT_SAMPLE_SIZE,
    MAX_EXACT_QUANTILE,
    magnitude_thresholds,
    same_sign,
)


@dataclass
class SelectionSettings:
    """Everything a selection step needs besides the gradients.

    `tau_d` / `tau_m` fixed absolute thresholds replace the quantile ones when set.
    """

    function: str = "sgu"
    q_d: float = 0.9
    q_m: float = 0.9
    tau_d: float | None = None
    tau_m: float | None = None
    threshold_scope: str = "tensor"
    threshold_population: str = "same_sign"
    maintain_scale: float = 1.0
    reverse_scale: float = 1.0
    max_exact_quantile: int = MAX_EXACT_QUANTILE
    quantile_sample_size: int = DEFAULT_SAMPLE_SIZE


@dataclass
class SelectionStats:
    """Per-step statistics as tensors (no host sync until someone reads them).

    `counts` is (num_tensors, 3): coordinates per action (prune, maintain,
    reverse); `conflicts` coordinates with g_r * g_f < 0 per tensor; `tau_d` and
    `tau_m` per tensor (nan where not used); `dot`, `norm_r2`, `norm_f2` the
    inner products over all tensors, for the cosine.
    """

    counts: torch.Tensor
    conflicts: torch.Tensor
    tau_d: torch.Tensor
    tau_m: torch.Tensor
    dot: torch.Tensor
    norm_r2: torch.Tensor
    norm_f2: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalar metrics under the names the trainer logs."""
        total = self.counts.sum().clamp_min(1)
        frac = (self.counts.sum(0) / total).tolist()
        cos = self.dot / (self.norm_r2.sqrt() * self.norm_f2.sqrt()).clamp_min(1e-30)
        out = {
            "sgu/prune_frac": frac[0],
            "sgu/maintain_frac": frac[1],
            "sgu/reverse_frac": frac[2],
            "sgu/conflict_frac": (self.conflicts.sum() / total).item(),
            "sgu/grad_cosine": cos.item(),
        }
        for name, taus in (("sgu/tau_d", self.tau_d), ("sgu/tau_m", self.tau_m)):
            finite = taus[torch.isfinite(taus)]
            if finite.numel():
                out[name] = finite.mean().item()
        return out


def select_gradients(
    grads_r: list[torch.Tensor],
    grads_f: list[torch.Tensor],
    settings: SelectionSettings,
    *,
    seed: int = 0,
) -> tuple[list[torch.Tensor], SelectionStats]:
    """Select the update for every tensor pair.

    Args:
        grads_r: retain gradients, one per parameter tensor.
        grads_f: forget gradients, same shapes.
        settings: rule name, quantile levels, threshold population and scales.
        seed: seeds the threshold sampling for tensors above
            `settings.max_exact_quantile` (use the optimizer step).

    Returns:
        The updates (same shapes as the inputs) and the step's statistics.

    Example:
        >>> import torch
        >>> updates, stats = select_gradients([torch.tensor([1.0, -2.0])], [torch.tensor([-1.0, -1.0])],
        ...                                   SelectionSettings(tau_d=0.5))
        >>> updates[0].tolist(), stats.summary()["sgu/maintain_frac"]
        ([1.0, -2.0], 1.0)
    """
    rule = get_selective_function(settings.function)
    n = len(grads_r)
    tau_d: list[float | None] = [settings.tau_d] * n
    tau_m: list[float | None] = [settings.tau_m] * n
    need_q_d = rule.uses_tau_d and settings.tau_d is None
    need_q_m = rule.uses_tau_m and settings.tau_m is None
    if need_q_d or need_q_m:
        q_tau_d, q_tau_m = magnitude_thresholds(
            grads_r,
            grads_f,
            settings.q_d if need_q_d else None,
            settings.q_m if need_q_m else None,
            scope=settings.threshold_scope,
            population=settings.threshold_population,
            max_exact=settings.max_exact_quantile,
            sample_size=settings.quantile_sample_size,
            seed=seed,
        )
        tau_d = q_tau_d if need_q_d else tau_d
        tau_m = q_tau_m if need_q_m else tau_m
    if not rule.uses_tau_d:
        tau_d = [None] * n
    if not rule.uses_tau_m:
        tau_m = [None] * n

    device = grads_r[0].device if n else torch.device("cpu")
    counts = torch.zeros(n, 3, dtype=torch.long, device=device)
    conflicts = torch.zeros(n, dtype=torch.long, device=device)
    dot = torch.zeros((), dtype=torch.float32, device=device)
    norm_r2, norm_f2 = dot.clone(), dot.clone()
    updates = []
    for i, (g_r, g_f) in enumerate(zip(grads_r, grads_f)):
        update, actions = rule.fn(
            g_r,
            g_f,
            tau_d[i],
            tau_m[i],
            maintain_scale=settings.maintain_scale,
            reverse_scale=settings.reverse_scale,
        )
        updates.append(update)
        counts[i] = torch.bincount(actions.reshape(-1).long(), minlength=3)[:3]
        conflicts[i] = (~same_sign(g_r, g_f)).sum()
        r, f = g_r.float(), g_f.float()
        dot += (r * f).sum()
        norm_r2 += (r * r).sum()
        norm_f2 += (f * f).sum()

    def as_tensor(vals: list[float | None]) -> torch.Tensor:
        return torch.tensor([float("nan") if v is None else float(v) for v in vals], device=device)

    stats = SelectionStats(counts, conflicts, as_tensor(tau_d), as_tensor(tau_m), dot, norm_r2, norm_f2)
    return updates, stats
