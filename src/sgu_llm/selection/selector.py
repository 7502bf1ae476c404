"""Apply a selective function to every selected parameter tensor, with statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sgu_llm.selection.fused import sgu_select_
from sgu_llm.selection.rules import FUSED_IMPLEMENTATIONS, SelectiveFunction, get_selective_function
from sgu_llm.selection.sharded import Shards, local_shards
from sgu_llm.selection.thresholds import (
    DEFAULT_SAMPLE_BLOCK,
    DEFAULT_SAMPLE_SIZE,
    MAX_EXACT_QUANTILE,
    magnitude_thresholds,
    same_sign,
)


@dataclass
class SelectionSettings:
    """Everything a selection step needs besides the gradients.

    `tau_d` / `tau_m` fixed absolute thresholds replace the quantile ones when set.
    `fused` runs the built-in rules the one-pass kernels implement (`rules.FUSED_IMPLEMENTATIONS`)
    through those kernels (`sgu_llm.selection.fused`), compiled when `compile` is set; every other
    rule, a user's included, runs as registered.
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
    quantile_sample_block: int = DEFAULT_SAMPLE_BLOCK
    fused: bool = True
    compile: bool = True


@dataclass
class SelectionStats:
    """Per-step statistics as tensors (no host sync until someone reads them).

    `counts` is (num_tensors, 3): coordinates per action (prune, maintain,
    reverse); `conflicts` coordinates with g_r * g_f < 0 per tensor; `tau_d` and
    `tau_m` per tensor (nan where not used); `dot`, `norm_r2`, `norm_f2` the
    inner products over all tensors, for the cosine. For sharded gradients all
    of them cover the full tensors (summed over ranks).
    """

    counts: torch.Tensor
    conflicts: torch.Tensor
    tau_d: torch.Tensor
    tau_m: torch.Tensor
    dot: torch.Tensor
    norm_r2: torch.Tensor
    norm_f2: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Scalar metrics under the names the trainer logs (one host transfer)."""
        total = self.counts.sum().clamp_min(1)
        cos = self.dot / (self.norm_r2.sqrt() * self.norm_f2.sqrt()).clamp_min(1e-30)
        taus = torch.stack([self.tau_d, self.tau_m])
        finite = torch.isfinite(taus)
        tau_mean = torch.where(finite, taus, 0.0).sum(1) / finite.sum(1).clamp_min(1)
        row = torch.cat(
            [self.counts.sum(0) / total, (self.conflicts.sum() / total)[None], cos[None], tau_mean]
        ).tolist()
        out = dict(
            zip(
                [
                    "sgu/prune_frac",
                    "sgu/maintain_frac",
                    "sgu/reverse_frac",
                    "sgu/conflict_frac",
                    "sgu/grad_cosine",
                ],
                row[:5],
            )
        )
        for name, value, any_finite in zip(("sgu/tau_d", "sgu/tau_m"), row[5:], finite.any(1).tolist()):
            if any_finite:
                out[name] = value
        return out


def select_gradients(
    grads_r: list[torch.Tensor],
    grads_f: list[torch.Tensor],
    settings: SelectionSettings,
    *,
    seed: int = 0,
    inplace: bool = False,
    states: list[dict] | None = None,
    names: list[str] | None = None,
    shards: Shards | None = None,
) -> tuple[list[torch.Tensor], SelectionStats]:
    """Select the update for every tensor pair.

    Args:
        grads_r: retain gradients, one per parameter tensor (plain tensors, or
            FSDP2-sharded DTensors: the rule runs on each rank's shard, the
            thresholds and statistics are gathered over the shards).
        grads_f: forget gradients, same shapes.
        settings: rule name, quantile levels, threshold population and scales.
        seed: seeds the threshold sampling for tensors above
            `settings.max_exact_quantile` (use the optimizer step).
        inplace: write each update into its g_r (the trainer does: g_r is
            `param.grad`), allocating nothing gradient-sized.
        states: one dict per tensor, kept by the caller across steps, for rules registered
            with `extras=("state",)` (running averages); None gives them fresh dicts.
        names: parameter names, for rules registered with `extras=("name",)`.
        shards: for plain tensors that are each rank's part of larger ones (DeepSpeed ZeRO-3 partitions):
            their full sizes and process group; handled as FSDP2's DTensor shards are.

    A non-finite value in g_r or g_f makes that tensor's update non-finite, so a
    loss scaler detects the overflow and skips the step.

    Returns:
        The updates (same shapes and types as the inputs) and the step's statistics.

    Example:
        >>> import torch
        >>> updates, stats = select_gradients([torch.tensor([1.0, -2.0])], [torch.tensor([-1.0, -1.0])],
        ...                                   SelectionSettings(tau_d=0.5))
        >>> updates[0].tolist(), stats.summary()["sgu/maintain_frac"]
        ([1.0, -2.0], 1.0)
    """
    rule = get_selective_function(settings.function)
    # The registered function is the contract; the fused kernel is used only where it implements it.
    fused = settings.fused and rule.fn in FUSED_IMPLEMENTATIONS
    n = len(grads_r)
    local_r, global_numels, group = local_shards(grads_r, shards)
    local_f, _, group_f = local_shards(grads_f, shards)
    _check_sharding(rule, group, group_f)
    tau_d, tau_m = _thresholds(rule, settings, local_r, local_f, seed, group, global_numels)
    device = local_r[0].device if n else torch.device("cpu")
    # One host-to-device copy for every threshold (None: +inf, the test never passes); tensor i reads row i.
    taus = torch.tensor(
        [[float("inf") if t is None else float(t) for t in pair] for pair in zip(tau_d, tau_m)],
        dtype=torch.float32,
        device=device,
    ).reshape(n, 2)
    rows = []  # per tensor: fused.STAT_COLUMNS
    updates = []
    for i, (g_r, g_f) in enumerate(zip(local_r, local_f)):
        if fused:
            out = g_r if inplace and g_r.is_contiguous() else g_r.clone(memory_format=torch.contiguous_format)
            # .to(): a no-op unless the model is spread over devices
            row = sgu_select_(out, g_f, taus[i, 0].to(out.device), taus[i, 1].to(out.device),
                              settings.maintain_scale, settings.reverse_scale, compile=settings.compile)
        else:
            extra = _rule_extras(rule, settings, i, seed, states, names, group)
            out, row = _apply_rule(rule, settings, g_r, g_f, tau_d[i], tau_m[i], extra, inplace)
        rows.append(row)
        updates.append(out)
    numels = torch.tensor([float(g.numel()) for g in local_r], device=device).reshape(n, 1)
    table = torch.cat([numels, torch.stack(rows)], 1) if rows else torch.zeros(0, 7, device=device)
    if group is not None:
        dist.all_reduce(table, group=group)  # shard statistics -> full-tensor statistics
        if shards is None:
            updates = [_like(g, u) for g, u in zip(grads_r, updates)]
    return updates, _statistics(table, tau_d, tau_m, device)


def _check_sharding(rule: SelectiveFunction, group: Any, group_f: Any) -> None:
    """g_r and g_f sharded alike, and a per-tensor rule never on shards."""
    if (group is None) != (group_f is None):
        raise ValueError("g_r and g_f must both be sharded DTensors or both plain tensors")
    if not rule.runs_sharded and group is not None:
        raise ValueError(
            f"selective function {rule.name!r} is per-tensor (a coordinate's update depends on the rest of its "
            "tensor) and the gradients are sharded (FSDP2, ZeRO-3): it would run on each shard alone. Use a per-coordinate "
            "rule (sgu, sgu_reverse, gru, sign_conflict, sago, ...) under FSDP2 or ZeRO-3, or DDP / DeepSpeed ZeRO-1/2."
        )


def _thresholds(
    rule: SelectiveFunction, settings: SelectionSettings, local_r: list, local_f: list, seed: int, group: Any,
    global_numels: Any,
) -> tuple[list[float | None], list[float | None]]:
    """tau_d and tau_m per tensor: fixed, the quantiles the rule needs, or None where it reads none."""
    n = len(local_r)
    tau_d: list[float | None] = [settings.tau_d] * n
    tau_m: list[float | None] = [settings.tau_m] * n
    need_q_d = rule.uses_tau_d and settings.tau_d is None
    need_q_m = rule.uses_tau_m and settings.tau_m is None
    if need_q_d or need_q_m:
        q_tau_d, q_tau_m = magnitude_thresholds(
            local_r,
            local_f,
            settings.q_d if need_q_d else None,
            settings.q_m if need_q_m else None,
            scope=settings.threshold_scope,
            population=settings.threshold_population,
            max_exact=settings.max_exact_quantile,
            sample_size=settings.quantile_sample_size,
            block=settings.quantile_sample_block,
            seed=seed,
            group=group,
            global_numels=global_numels,
            compile=settings.compile,
        )
        tau_d = q_tau_d if need_q_d else tau_d
        tau_m = q_tau_m if need_q_m else tau_m
    return (tau_d if rule.uses_tau_d else [None] * n), (tau_m if rule.uses_tau_m else [None] * n)


def _rule_extras(
    rule: SelectiveFunction, settings: SelectionSettings, i: int, seed: int, states: list | None, names: list | None,
    group: Any = None,
) -> dict:
    """The keyword arguments a rule asked for with `extras`, for tensor i."""
    extra: dict = {}
    if "state" in rule.extras:
        extra["state"] = states[i] if states is not None else {}
    if "q" in rule.extras:
        extra.update(q_d=settings.q_d, q_m=settings.q_m)
    if "seed" in rule.extras:
        extra["seed"] = seed * 1009 + i
    if "name" in rule.extras:
        extra["name"] = names[i] if names is not None else str(i)
    if "group" in rule.extras:
        extra["group"] = group
    return extra


def _apply_rule(
    rule: SelectiveFunction, settings: SelectionSettings, g_r: torch.Tensor, g_f: torch.Tensor,
    tau_d: float | None, tau_m: float | None, extra: dict, inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The registered function on one tensor pair: its update (in g_r when `inplace`) and statistics row."""
    update, actions = rule.fn(
        g_r, g_f, tau_d, tau_m, maintain_scale=settings.maintain_scale, reverse_scale=settings.reverse_scale, **extra
    )
    r, f = g_r.float(), g_f.float()
    counts = torch.bincount(actions.reshape(-1).long(), minlength=3)[:3].float()
    conflicts = (~same_sign(g_r, g_f)).sum().float()
    row = torch.stack([counts[1], counts[2], conflicts, (r * f).sum(), (r * r).sum(), (f * f).sum()])
    if update.numel():
        # 0 * (|g_r|^2 + |g_f|^2) is 0, or nan when an input holds inf/nan: a pruned inf must
        # not vanish, or a loss scaler would step on an overflowed gradient (the fused kernel
        # does this per coordinate).
        update.view(-1)[:1].add_((row[4] + row[5]).mul(0).to(update.dtype))
    if inplace:
        g_r.copy_(update)
        update = g_r
    return update, row


def _statistics(
    table: torch.Tensor, tau_d: list[float | None], tau_m: list[float | None], device: Any
) -> SelectionStats:
    """The step's statistics from the per-tensor table (numel, then fused.STAT_COLUMNS)."""
    numel, maintain, reverse = table[:, 0], table[:, 1], table[:, 2]
    counts = torch.stack([numel - maintain - reverse, maintain, reverse], 1).round().long()

    def as_tensor(vals: list[float | None]) -> torch.Tensor:
        return torch.tensor([float("nan") if v is None else float(v) for v in vals], device=device)

    return SelectionStats(
        counts, table[:, 3].round().long(), as_tensor(tau_d), as_tensor(tau_m),
        table[:, 4].sum(), table[:, 5].sum(), table[:, 6].sum(),
    )


def _like(reference: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Wrap a local shard back into a DTensor laid out like `reference` (no copy when it is its local tensor)."""
    mine = reference.to_local()
    if local is mine or (local.data_ptr() == mine.data_ptr() and local.shape == mine.shape):
        return reference  # updated in place
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, reference.device_mesh, reference.placements, shape=reference.shape, stride=reference.stride()
    )
