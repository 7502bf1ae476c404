"""Adaptive thresholds: quantiles of |g_r| - |g_f| that work at any tensor size.

`torch.quantile` refuses inputs above 2**24 elements and sorts its input. Above
`max_exact` elements we estimate the quantile from a uniform random sample of
coordinates (with replacement) instead. The estimate's *rank* error is that of a
sample quantile: its standard deviation is sqrt(q (1 - q) / m) for m sampled
population members, i.e. 3e-4 at q = 0.9 and m = 2**20. `tests/test_thresholds.py`
measures it on a 2**25-element tensor and asserts it stays below 2e-3.

The sample is drawn from a generator seeded by the caller (the optimizer step), so
every data-parallel rank, which holds the same reduced gradients, draws the same
coordinates and computes the same threshold.
"""

from __future__ import annotations

import torch

MAX_EXACT_QUANTILE = 2**24  # torch.quantile's own input limit
DEFAULT_SAMPLE_SIZE = 2**20

THRESHOLD_SCOPES = ("tensor", "global")
THRESHOLD_POPULATIONS = ("same_sign", "all")


def same_sign(g_r: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    """Mask of coordinates with g_r * g_f >= 0, computed without multiplying.

    A product of two small gradients underflows to 0 (and would count as "same
    sign"); comparing signs cannot.
    """
    return ~(((g_r > 0) & (g_f < 0)) | ((g_r < 0) & (g_f > 0)))


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
    if num_samples is not None:
        idx = torch.randint(
            g_r.numel(), (num_samples,), generator=_generator(g_r.device, seed), device=g_r.device
        )
        g_r, g_f = g_r[idx], g_f[idx]
    diff = _magnitude_diff(g_r, g_f)
    if population == "same_sign":
        diff = diff[same_sign(g_r, g_f)]
    elif population != "all":
        raise ValueError(f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {population!r}")
    return diff


def _quantiles(values: torch.Tensor, qs: list[float]) -> list[float]:
    if values.numel() == 0:
        # Empty population: no coordinate is tested against this threshold.
        return [float("inf")] * len(qs)
    out = torch.quantile(values, torch.tensor(qs, dtype=values.dtype, device=values.device))
    return out.tolist()


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
) -> tuple[list[float | None], list[float | None]]:
    """Adaptive thresholds tau_d and tau_m for each tensor pair.

    tau_d is the `q_d` quantile of d = |g_r| - |g_f| and tau_m the `q_m` quantile
    of -d = |g_f| - |g_r|, over the chosen population (`"same_sign"`: the
    coordinates where the thresholds apply; `"all"`: every coordinate), per
    tensor (`scope="tensor"`) or over all tensors together (`"global"`, where
    every tensor gets the same value). Pass `q_d=None` / `q_m=None` to skip one.

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
    # tau_m = quantile_{q_m}(-d) = -quantile_{1-q_m}(d): one sample serves both.
    qs = ([q_d] if q_d is not None else []) + ([1.0 - q_m] if q_m is not None else [])
    n = len(grads_r)
    if not qs:
        return [None] * n, [None] * n

    def unpack(vals: list[float]) -> tuple[float | None, float | None]:
        d = vals[0] if q_d is not None else None
        m = -vals[-1] if q_m is not None else None
        return d, m

    if scope == "tensor":
        taus = []
        for i, (g_r, g_f) in enumerate(zip(grads_r, grads_f)):
            k = None if g_r.numel() <= max_exact else sample_size
            taus.append(unpack(_quantiles(population_sample(g_r, g_f, population, k, seed + i), qs)))
        return [t[0] for t in taus], [t[1] for t in taus]

    total = sum(g.numel() for g in grads_r)
    if total <= max_exact:
        values = torch.cat(
            [population_sample(r, f, population, None, seed) for r, f in zip(grads_r, grads_f)]
        )
    else:
        # Split the sample across tensors in proportion to their sizes (multinomial counts).
        device = grads_r[0].device
        sizes = torch.tensor([g.numel() for g in grads_r], dtype=torch.float64)
        counts = torch.multinomial(
            sizes / sizes.sum(),
            sample_size,
            replacement=True,
            generator=_generator(torch.device("cpu"), seed),
        )
        counts = torch.bincount(counts, minlength=n).tolist()
        values = torch.cat(
            [
                population_sample(r, f, population, c, seed + 1 + i).to(device)
                for i, (r, f, c) in enumerate(zip(grads_r, grads_f, counts))
                if c > 0
            ]
        )
    d, m = unpack(_quantiles(values, qs))
    return [d] * n, [m] * n
