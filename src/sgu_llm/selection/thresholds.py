"""Adaptive thresholds: quantiles of |g_r| - |g_f| that cost little at any tensor size.

Up to `max_exact` elements a tensor's quantile is exact (`torch.kthvalue` order
statistics with linear interpolation, the definition `torch.quantile` uses, but
a selection rather than a sort). Above it we estimate the quantile from a
uniform random sample of coordinates (with replacement). The estimate's *rank*
error is that of a sample quantile: its standard deviation is sqrt(q (1 - q) / m)
for m sampled population members: 3.3e-3 at q = 0.9 for the default 2**14
samples of which about half are same-sign (the threshold marks the top
10 +- 0.3 % instead of exactly 10 %), 4e-4 with 2**20 samples.
`tests/test_thresholds.py` measures it.

The sample is drawn from a generator seeded by the caller (the optimizer step), so
every data-parallel rank, which holds the same reduced gradients, draws the same
coordinates and computes the same threshold. Sharded gradients (FSDP2) are
handled in `sgu_llm.selection.sharded`.
"""

from __future__ import annotations

import torch

# Exact up to 2**14 elements per tensor, then 2**14 samples: a threshold costs a fixed ~0.4 ms on
# a CPU whatever the tensor's size, which matters with hundreds of tensors (scripts/bench_step.py).
MAX_EXACT_QUANTILE = 2**14
DEFAULT_SAMPLE_SIZE = 2**14

THRESHOLD_SCOPES = ("tensor", "global")
THRESHOLD_POPULATIONS = ("same_sign", "all")


def same_sign(g_r: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    """Mask of coordinates with g_r * g_f >= 0, computed from the signs.

    A product of two small gradients underflows to 0 (and would count as "same
    sign"); the product of their signs (-1, 0 or 1) cannot.
    """
    return g_r.sign() * g_f.sign() >= 0


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _magnitude_diff(g_r: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    return g_r.float().abs() - g_f.float().abs()


def population_sample(
    g_r: torch.Tensor,
    g_f: torch.Tensor,
    population: str,
    num_samples: int | None,
    seed: int,
) -> torch.Tensor:
    """Values of |g_r| - |g_f| over the threshold population of one tensor pair.

    With `num_samples=None` every member is returned (exact); otherwise
    `num_samples` coordinates are drawn uniformly with replacement and those
    outside the population are dropped, so the result is a uniform sample of
    the population.
    """
    g_r, g_f = g_r.reshape(-1), g_f.reshape(-1)
    if num_samples is not None and (num_samples == 0 or g_r.numel() == 0):
        return torch.zeros(0, dtype=torch.float32, device=g_r.device)
    if num_samples is not None:
        idx = torch.randint(
            g_r.numel(), (num_samples,), generator=_generator(g_r.device, seed), device=g_r.device
        )
        g_r, g_f = torch.take(g_r, idx), torch.take(g_f, idx)
    diff = _magnitude_diff(g_r, g_f)
    if population == "same_sign":
        diff = torch.masked_select(diff, same_sign(g_r, g_f))
    elif population != "all":
        raise ValueError(f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {population!r}")
    return diff


def quantiles(values: torch.Tensor, qs: list[float]) -> list[float]:
    """`torch.quantile(values, qs)` (linear interpolation) without sorting and without its size limit.

    Each quantile needs the order statistics at floor(q (n - 1)) and the next
    one; `torch.kthvalue` finds each in linear time.

    Example:
        >>> quantiles(torch.tensor([4.0, 1.0, 3.0, 2.0]), [0.5, 1.0])
        [2.5, 4.0]
    """
    n = values.numel()
    if n == 0:
        # Empty population: no coordinate is tested against this threshold.
        return [float("inf")] * len(qs)
    values = values.reshape(-1)
    plan = []  # (low order statistic, high one, interpolation weight) per quantile, 0-based
    for q in qs:
        pos = q * (n - 1)
        lo = min(int(pos), n - 1)
        plan.append((lo, min(lo + 1, n - 1), pos - lo))
    ks = sorted({k for lo, hi, _ in plan for k in (lo, hi)})
    # One host transfer for all order statistics of this population.
    stats = dict(zip(ks, torch.stack([torch.kthvalue(values, k + 1).values for k in ks]).tolist()))
    return [stats[lo] + w * (stats[hi] - stats[lo]) if w else stats[lo] for lo, hi, w in plan]


def _sample_count(sample_size: int, local_numel: int, global_numel: int) -> int:
    """This shard's part of a sample of `sample_size` drawn over `global_numel` coordinates."""
    if local_numel == global_numel:
        return sample_size
    return max(1, round(sample_size * local_numel / global_numel)) if local_numel else 0


def magnitude_thresholds(
    grads_r: list[torch.Tensor],
    grads_f: list[torch.Tensor],
    q_d: float | None,
    q_m: float | None,
    *,
    scope: str = "tensor",
    population: str = "same_sign",
    max_exact: int = MAX_EXACT_QUANTILE,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    group=None,
    global_numels: list[int] | None = None,
) -> tuple[list[float | None], list[float | None]]:
    """Adaptive thresholds tau_d and tau_m for each tensor pair.

    tau_d is the `q_d` quantile of d = |g_r| - |g_f| and tau_m the `q_m` quantile
    of -d = |g_f| - |g_r|, over the chosen population (`"same_sign"`: the
    coordinates where the thresholds apply; `"all"`: every coordinate), per
    tensor (`scope="tensor"`) or over all tensors together (`"global"`, where
    every tensor gets the same value). Pass `q_d=None` / `q_m=None` to skip one.

    Sharded gradients (FSDP2): pass each rank's local shards, their full sizes as
    `global_numels` and the process `group`. A population up to `max_exact` is
    all-gathered whole, so the threshold is exactly the unsharded one; above
    it every rank samples its shard in proportion to the shard's size and the
    samples are all-gathered (a stratified sample, no less accurate than the
    unsharded one). Every rank returns the same thresholds.

    Returns:
        Two lists with one threshold (or None) per tensor.

    Example:
        >>> import torch
        >>> g_r, g_f = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 1.0])
        >>> magnitude_thresholds([g_r], [g_f], q_d=0.5, q_m=None)
        ([1.0], [None])
    """
    if scope not in THRESHOLD_SCOPES:
        raise ValueError(f"threshold_scope must be one of {THRESHOLD_SCOPES}, got {scope!r}")
    if population not in THRESHOLD_POPULATIONS:
        raise ValueError(f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {population!r}")
    # tau_m = quantile_{q_m}(-d) = -quantile_{1-q_m}(d): one sample serves both.
    qs = ([q_d] if q_d is not None else []) + ([1.0 - q_m] if q_m is not None else [])
    n = len(grads_r)
    if not qs:
        return [None] * n, [None] * n
    local_numels = [g.numel() for g in grads_r]
    global_numels = global_numels or local_numels
    rank = 0
    if group is not None:
        import torch.distributed as dist

        rank = dist.get_rank(group)

    def unpack(vals: list[float]) -> tuple[float | None, float | None]:
        d = vals[0] if q_d is not None else None
        m = -vals[-1] if q_m is not None else None
        return d, m

    def gathered(parts: list[torch.Tensor]) -> list[torch.Tensor]:
        if group is None:
            return parts
        from sgu_llm.selection.sharded import all_gather_ragged

        return all_gather_ragged(parts, group)

    # Different ranks sample different shards: give each its own stream.
    rank_seed = seed + 1_000_003 * rank
    if scope == "tensor":
        parts = []
        for i, (g_r, g_f) in enumerate(zip(grads_r, grads_f)):
            k = None
            if global_numels[i] > max_exact:
                k = _sample_count(sample_size, local_numels[i], global_numels[i])
            parts.append(population_sample(g_r, g_f, population, k, rank_seed + i))
        taus = [unpack(quantiles(v, qs)) for v in gathered(parts)]
        return [t[0] for t in taus], [t[1] for t in taus]

    total, local_total = sum(global_numels), sum(local_numels)
    if total <= max_exact:
        values = torch.cat(
            [population_sample(r, f, population, None, seed) for r, f in zip(grads_r, grads_f)]
        )
    else:
        # Split this rank's sample across its tensors in proportion to their sizes (multinomial counts).
        device = grads_r[0].device
        sizes = torch.tensor([max(m, 0) for m in local_numels], dtype=torch.float64)
        k = _sample_count(sample_size, local_total, total)
        counts = [0] * n
        if k and sizes.sum() > 0:
            draws = torch.multinomial(
                sizes / sizes.sum(), k, replacement=True, generator=_generator(torch.device("cpu"), rank_seed)
            )
            counts = torch.bincount(draws, minlength=n).tolist()
        chunks = [
            population_sample(r, f, population, c, rank_seed + 1 + i).to(device)
            for i, (r, f, c) in enumerate(zip(grads_r, grads_f, counts))
            if c > 0
        ]
        values = torch.cat(chunks) if chunks else torch.zeros(0, device=device)
    (values,) = gathered([values])
    d, m = unpack(quantiles(values, qs))
    return [d] * n, [m] * n
