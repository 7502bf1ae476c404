"""Adaptive thresholds: quantiles of |g_r| - |g_f| that cost little at any tensor size.

Up to `max_exact` elements a tensor's quantile is exact (order statistics with
linear interpolation, the definition `torch.quantile` uses). Above it we estimate
the quantile from a sample of `sample_size` coordinates taken as blocks of `block`
contiguous coordinates (default 16 float32 values: one 64-byte cache line): the
tensor is cut into `sample_size / block` equal strata and one block is drawn
uniformly in each. Every block is equally likely to be drawn, so the estimate is
consistent. Its rank error is that of a sample quantile, raised by the correlation
of neighbouring coordinates (they share a weight row) and lowered by the
stratification: on a 512-wide Llama's gradients (`scripts/threshold_accuracy.py`)
the rank error at q = 0.9 has a root mean square of 3.4e-3 with the default
2**14 samples in blocks of 16, 2.8e-3 with 2**14 single coordinates (`block=1`)
and 5.5e-3 with 2**12. A block costs one cache line where 16 single coordinates
cost 16: over that model's tensors the default is 4x cheaper than `block=1`,
which is what makes per-tensor thresholds cheap over a whole model.
`tests/test_thresholds.py` measures the error.

All per-tensor thresholds of a step are computed together: the samples (and the
exact populations of small tensors) are laid out as rows of one matrix, padded
with +inf, sorted row by row (numpy's vectorised sort on CPU, `torch.sort`
elsewhere) and read at each row's order statistics.

The sample is drawn from a generator seeded by the caller (the optimizer step), so
every data-parallel rank, which holds the same reduced gradients, draws the same
coordinates and computes the same threshold. Sharded gradients (FSDP2) are
handled in `sgu_llm.selection.sharded`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from sgu_llm.selection.kernel import PROBE_NUMEL, Kernel, probe_size, probe_values
from sgu_llm.selection.sharded import all_gather_ragged

# Exact up to 2**14 elements per tensor, then 2**14 sampled coordinates in blocks of 16: per-tensor
# thresholds for a whole model cost a fraction of one pass over its gradients (scripts/bench_selection.py).
MAX_EXACT_QUANTILE = 2**14
DEFAULT_SAMPLE_SIZE = 2**14
DEFAULT_SAMPLE_BLOCK = 16
# Sample rows are processed in chunks of at most this many elements: bounded memory, and on a CPU
# small enough (512 KiB a matrix) to stay in L2 between the gather, the row kernel and the sort.
_CHUNK_ELEMENTS = {"cpu": 2**17}
_CHUNK_ELEMENTS_DEFAULT = 2**22

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
    block: int = 1,
) -> torch.Tensor:
    """Values of |g_r| - |g_f| over the threshold population of one tensor pair.

    With `num_samples=None` every member is returned (exact); otherwise
    `num_samples` coordinates are drawn, those outside the population dropped:
    independently and uniformly with replacement (`block=1`), or as
    `num_samples // block` stratified blocks of `block` contiguous coordinates
    (`sample_blocks`; at least one block).
    """
    g_r, g_f = g_r.reshape(-1), g_f.reshape(-1)
    if num_samples is not None and (num_samples == 0 or g_r.numel() == 0):
        return torch.zeros(0, dtype=torch.float32, device=g_r.device)
    if num_samples is not None:
        gen = _generator(g_r.device, seed)
        if 1 < block <= g_r.numel():
            b = sample_blocks([g_r.numel()], max(num_samples, block), block, gen, g_r.device)[0]
            g_r, g_f = gather_blocks(g_r, b, block), gather_blocks(g_f, b, block)
        else:
            idx = torch.randint(g_r.numel(), (num_samples,), generator=gen, device=g_r.device)
            g_r, g_f = torch.take(g_r, idx), torch.take(g_f, idx)
    diff = _magnitude_diff(g_r, g_f)
    if population == "same_sign":
        diff = torch.masked_select(diff, same_sign(g_r, g_f))
    elif population != "all":
        raise ValueError(f"threshold_population must be one of {THRESHOLD_POPULATIONS}, got {population!r}")
    return diff


def _sort_rows(values: torch.Tensor) -> torch.Tensor:
    """Sort along the last dimension: numpy's vectorised sort on CPU (15x torch's there), torch elsewhere."""
    if values.device.type == "cpu" and values.dtype == torch.float32:
        return torch.from_numpy(np.sort(values.detach().numpy(), axis=-1))
    return torch.sort(values, dim=-1).values


def _row_quantiles(sorted_rows: torch.Tensor, counts: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Linearly interpolated quantiles of the first `counts[i]` values of each sorted row (float64).

    A row with no values gets +inf: no coordinate is tested against its threshold.
    """
    counts = counts.to(device=sorted_rows.device, dtype=torch.long)[:, None]
    last = (counts - 1).clamp_min(0)
    pos = torch.tensor(qs, dtype=torch.float64, device=sorted_rows.device)[None, :] * last
    lo = pos.floor().long().clamp_max(last)
    hi = (lo + 1).clamp_max(last)
    v_lo = sorted_rows.gather(1, lo).double()
    v_hi = sorted_rows.gather(1, hi).double()
    w = pos - lo
    out = torch.where(w > 0, v_lo + w * (v_hi - v_lo), v_lo)
    return torch.where(counts > 0, out, float("inf"))


def quantiles(values: torch.Tensor, qs: list[float]) -> list[float]:
    """`torch.quantile(values, qs)` (linear interpolation) without its size limit.

    Example:
        >>> quantiles(torch.tensor([4.0, 1.0, 3.0, 2.0]), [0.5, 1.0])
        [2.5, 4.0]
    """
    values = values.reshape(1, -1).float()
    counts = torch.tensor([values.shape[1]])
    return _row_quantiles(_sort_rows(values), counts, qs)[0].tolist()


def sample_blocks(
    numels: list[int], num_samples: int, block: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Block numbers of a stratified block sample of each tensor: (len(numels), num_samples // block).

    Tensor i is cut into `numels[i] // block` blocks of `block` contiguous coordinates (block b
    holds coordinates b * block ... b * block + block - 1) and those into `num_samples // block`
    equal strata; one block is drawn uniformly in each stratum (with replacement when there are
    fewer blocks than strata). The last `numels[i] % block` coordinates are never drawn.

    Example:
        >>> b = sample_blocks([1000, 64], 64, 16, torch.Generator().manual_seed(0), torch.device("cpu"))
        >>> b.shape, bool((b[0] < 62).all()), b[1].tolist()
        (torch.Size([2, 4]), True, [0, 1, 2, 3])
    """
    strata = max(1, num_samples // block)
    blocks = torch.tensor([n // block for n in numels], dtype=torch.float64, device=device)[:, None]
    u = torch.rand(len(numels), strata, dtype=torch.float64, generator=generator, device=device)
    j = torch.arange(strata, dtype=torch.float64, device=device)
    return ((j + u) / strata * blocks).floor().long().clamp_max((blocks - 1).long())


def gather_blocks(
    flat: torch.Tensor, blocks: torch.Tensor, block: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The coordinates of `blocks` (block numbers, as `sample_blocks` draws) of a 1-D tensor, flat.

    `index_select` on a (numel / block, block) view copies whole blocks: ~10x `torch.take`'s speed on
    gradients that are not in cache. With `out` (float32, `len(blocks) * block` long) the values are
    written there, converted from a bf16 tensor or copied from another device as needed.
    """
    rows = flat[: flat.numel() // block * block].view(-1, block)
    if out is None:
        return rows.index_select(0, blocks).reshape(-1)
    if rows.dtype == out.dtype and rows.device == out.device:
        torch.index_select(rows, 0, blocks, out=out.view(-1, block))
    else:  # a bf16 stash, or a model spread over devices
        out.view(-1, block).copy_(rows.index_select(0, blocks.to(rows.device)))
    return out


def _row_values(
    r_rows: torch.Tensor, f_rows: torch.Tensor, lengths: torch.Tensor, same_sign_only: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """|r| - |f| of each row's population members (the first `lengths[i]` columns, same-sign ones
    if asked), +inf elsewhere, and the member count per row."""
    member = torch.arange(r_rows.shape[1], device=r_rows.device)[None, :] < lengths[:, None]
    if same_sign_only:
        member = member & same_sign(r_rows, f_rows)
    return torch.where(member, _magnitude_diff(r_rows, f_rows), float("inf")), member.sum(1)


def _row_values_probes(args: tuple) -> list[tuple]:
    """Probe rows for `_row_values` like `args`: the same width class and number of rows (4 where there are
    more than one), lengths from the whole row to none, gradient-like values with specials."""
    r_rows, f_rows, lengths, same_sign_only = args
    rows = probe_size(r_rows.shape[0], 4)
    width = probe_size(r_rows.shape[1], max(PROBE_NUMEL // rows, 2))
    r = probe_values(rows * width, r_rows.dtype, r_rows.device, seed=2).view(rows, width)
    f = probe_values(rows * width, f_rows.dtype, f_rows.device, seed=3).view(rows, width)
    f[:, ::3] = -r[:, ::3]  # ties of opposite sign
    lens = torch.tensor([width, width // 2 + 3, 1, 0][:rows], dtype=lengths.dtype, device=lengths.device)
    return [(r, f, lens, same_sign_only)]


_row_values_kernel = Kernel(_row_values, probe=_row_values_probes, name="threshold_rows")


def _tensor_thresholds(
    grads_r: list[torch.Tensor],
    grads_f: list[torch.Tensor],
    qs: list[float],
    population: str,
    max_exact: int,
    sample_size: int,
    block: int,
    seed: int,
    compile: bool,
) -> list[list[float]]:
    """Per-tensor quantiles of one process's (unsharded) gradients, batched as described above."""
    n = len(grads_r)
    numels = [g.numel() for g in grads_r]
    block = max(1, min(block, sample_size))
    width = max(1, sample_size // block) * block
    out: list[list[float] | None] = [None] * n
    rows = []  # (tensor index, sampled?)
    for i, m in enumerate(numels):
        if m > max_exact and m >= block:
            rows.append((i, True))
        elif m <= width:
            rows.append((i, False))
        else:  # exact population wider than a sample row (max_exact raised): on its own
            values = population_sample(grads_r[i], grads_f[i], population, None, seed)
            out[i] = quantiles(values, qs)
    if rows:
        device = grads_r[rows[0][0]].device
        gen = _generator(device, seed)
        per_chunk = max(1, _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_DEFAULT) // width)
        for c in range(0, len(rows), per_chunk):
            chunk = rows[c : c + per_chunk]
            sampled = [i for i, s in chunk if s]
            picks = (
                iter(sample_blocks([numels[i] for i in sampled], width, block, gen, device))
                if sampled
                else None
            )
            # Columns past a row's length stay uninitialised: they are not population members.
            r_rows = torch.empty(len(chunk), width, dtype=torch.float32, device=device)
            f_rows = torch.empty(len(chunk), width, dtype=torch.float32, device=device)
            lengths = []
            for j, (i, s) in enumerate(chunk):
                r, f = grads_r[i].reshape(-1), grads_f[i].reshape(-1)
                if s:
                    b = next(picks)
                    gather_blocks(r, b, block, out=r_rows[j])
                    gather_blocks(f, b, block, out=f_rows[j])
                    lengths.append(width)
                else:
                    r_rows[j, : r.numel()] = r
                    f_rows[j, : f.numel()] = f
                    lengths.append(r.numel())
            values, counts = _row_values_kernel(
                r_rows,
                f_rows,
                torch.tensor(lengths, device=device),
                population == "same_sign",
                compile=compile,
            )
            taus = _row_quantiles(_sort_rows(values), counts, qs).tolist()
            for (i, _), t in zip(chunk, taus):
                out[i] = t
    return out  # type: ignore[return-value]


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
    block: int = DEFAULT_SAMPLE_BLOCK,
    seed: int = 0,
    group=None,
    global_numels: list[int] | None = None,
    compile: bool = True,
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
    unsharded one). Every rank returns the same thresholds. Per-tensor samples,
    sharded or not, are stratified blocks of `block` contiguous coordinates (see
    the module docstring); the global-scope sample, a few coordinates per
    tensor, is of independent coordinates.

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

    def unpack(vals: list[float]) -> tuple[float | None, float | None]:
        return (vals[0] if q_d is not None else None), (-vals[-1] if q_m is not None else None)

    global_numels = global_numels or [g.numel() for g in grads_r]
    # Different ranks sample different shards: give each its own stream.
    rank_seed = seed + 1_000_003 * (dist.get_rank(group) if group is not None else 0)
    if scope == "tensor" and group is None:
        found = _tensor_thresholds(grads_r, grads_f, qs, population, max_exact, sample_size, block, seed, compile)
        taus = [unpack(t) for t in found]
    elif scope == "tensor":
        samples = _sharded_tensor_samples(grads_r, grads_f, population, max_exact, sample_size, block, rank_seed,
                                          global_numels)
        taus = [unpack(quantiles(v, qs)) for v in all_gather_ragged(samples, group)]
    else:
        values = _global_sample(grads_r, grads_f, population, max_exact, sample_size, seed, rank_seed, global_numels)
        if group is not None:
            (values,) = all_gather_ragged([values], group)
        taus = [unpack(quantiles(values, qs))] * n
    return [t[0] for t in taus], [t[1] for t in taus]


def _sharded_tensor_samples(
    grads_r: list[torch.Tensor], grads_f: list[torch.Tensor], population: str, max_exact: int, sample_size: int,
    block: int, rank_seed: int, global_numels: list[int],
) -> list[torch.Tensor]:
    """Per tensor, this rank's share of the population (whole up to `max_exact` elements in the full tensor, a
    sample in proportion to the shard's size above)."""
    parts = []
    for i, (g_r, g_f) in enumerate(zip(grads_r, grads_f)):
        k = None
        if global_numels[i] > max_exact:
            k = _sample_count(sample_size, g_r.numel(), global_numels[i])
        parts.append(population_sample(g_r, g_f, population, k, rank_seed + i, block))
    return parts


def _global_sample(
    grads_r: list[torch.Tensor], grads_f: list[torch.Tensor], population: str, max_exact: int, sample_size: int,
    seed: int, rank_seed: int, global_numels: list[int],
) -> torch.Tensor:
    """This rank's values of the population over all tensors together (`scope="global"`): all of them up to
    `max_exact`, else a sample split across the tensors in proportion to their sizes (multinomial counts)."""
    local_numels = [g.numel() for g in grads_r]
    total, local_total = sum(global_numels), sum(local_numels)
    if total <= max_exact:
        return torch.cat([population_sample(r, f, population, None, seed) for r, f in zip(grads_r, grads_f)])
    n = len(grads_r)
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
    return torch.cat(chunks) if chunks else torch.zeros(0, device=device)
