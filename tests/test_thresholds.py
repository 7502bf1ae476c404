"""Adaptive thresholds: exact (kthvalue) up to max_exact, sampled above it, with measured rank error."""

import pytest
import torch

from sgu_llm.selection import MAX_EXACT_QUANTILE, magnitude_thresholds, same_sign
from sgu_llm.selection.thresholds import DEFAULT_SAMPLE_SIZE, quantiles, sample_blocks

# Equalities of runs and measured tolerances: .ci/run checks them under another machine's CPU kernels too.
pytestmark = pytest.mark.outcome


def test_same_sign_population_exact():
    g_r = torch.tensor([1.0, 2.0, 3.0, -4.0, 5.0])
    g_f = torch.tensor([0.5, 0.5, 0.5, 1.0, -1.0])  # last two conflict
    tau_d, tau_m = magnitude_thresholds([g_r], [g_f], q_d=0.5, q_m=0.5, population="same_sign")
    # same-sign diffs: [0.5, 1.5, 2.5] -> median 1.5; reversed diffs [-0.5, -1.5, -2.5] -> median -1.5
    assert tau_d == [pytest.approx(1.5)] and tau_m == [pytest.approx(-1.5)]
    tau_d, _ = magnitude_thresholds([g_r], [g_f], q_d=0.5, q_m=None, population="all")
    # all diffs: [0.5, 1.5, 2.5, -3 (=4-1... |−4|−|1| = 3), 4] -> sorted [0.5, 1.5, 2.5, 3, 4]
    assert tau_d == [pytest.approx(2.5)]


def test_matches_torch_quantile_per_tensor_and_global():
    torch.manual_seed(0)
    g_r = [torch.randn(300), torch.randn(20, 10) * 3]
    g_f = [torch.randn(300), torch.randn(20, 10)]
    tau_d, tau_m = magnitude_thresholds(g_r, g_f, q_d=0.9, q_m=0.8, scope="tensor", population="all")
    for r, f, d, m in zip(g_r, g_f, tau_d, tau_m):
        diff = r.abs().flatten() - f.abs().flatten()
        assert d == pytest.approx(torch.quantile(diff, 0.9).item(), rel=1e-5)
        assert m == pytest.approx(torch.quantile(-diff, 0.8).item(), rel=1e-5)
    tau_d, _ = magnitude_thresholds(g_r, g_f, q_d=0.9, q_m=None, scope="global", population="all")
    diff = torch.cat([(r.abs() - f.abs()).flatten() for r, f in zip(g_r, g_f)])
    assert tau_d == [pytest.approx(torch.quantile(diff, 0.9).item(), rel=1e-5)] * 2


def test_empty_population_gives_infinite_threshold():
    tau_d, _ = magnitude_thresholds([torch.tensor([1.0])], [torch.tensor([-1.0])], q_d=0.5, q_m=None)
    assert tau_d == [float("inf")]


def test_bad_scope_and_population():
    with pytest.raises(ValueError, match="threshold_scope"):
        magnitude_thresholds([torch.ones(2)], [torch.ones(2)], 0.5, None, scope="layer")
    with pytest.raises(ValueError, match="threshold_population"):
        magnitude_thresholds([torch.ones(2)], [torch.ones(2)], 0.5, None, population="some")


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 20_000])
def test_kthvalue_quantiles_equal_torch_quantile(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    qs = [0.0, 0.1, 0.5, 0.9, 0.999, 1.0]
    expected = torch.quantile(values, torch.tensor(qs)).tolist()
    # torch interpolates in float32, we in float64.
    assert quantiles(values, qs) == pytest.approx(expected, rel=1e-5, abs=1e-7)


# Rank-error bound: about 5 standard deviations of a sample quantile, sqrt(q (1 - q) / m), with m the
# same-sign half of the samples (sd 3.3e-3 at the default 2**14 samples, 4e-4 at 2**20).
@pytest.mark.parametrize(
    ("scope", "sample_size", "tol"),
    [("tensor", DEFAULT_SAMPLE_SIZE, 1.6e-2), ("tensor", 2**20, 2e-3), ("global", 2**20, 2e-3)],
)
def test_sampled_threshold_rank_error(scope, sample_size, tol):
    """2**25 elements (twice torch.quantile's limit): the sampled threshold's rank error is small."""
    n = 2**25
    assert n > MAX_EXACT_QUANTILE
    gen = torch.Generator().manual_seed(0)
    g_r = torch.randn(n, generator=gen)
    g_f = torch.randn(n, generator=gen)
    (tau_d,), (tau_m,) = magnitude_thresholds(
        [g_r], [g_f], q_d=0.9, q_m=0.7, scope=scope, sample_size=sample_size, seed=3
    )
    mask = same_sign(g_r, g_f)
    diff = (g_r.abs() - g_f.abs())[mask]
    rank_d = (diff <= tau_d).double().mean().item()
    rank_m = ((-diff) <= tau_m).double().mean().item()
    assert abs(rank_d - 0.9) < tol
    assert abs(rank_m - 0.7) < tol
    # Deterministic in the seed, so every data-parallel rank computes the same value.
    again, _ = magnitude_thresholds(
        [g_r], [g_f], q_d=0.9, q_m=None, scope=scope, sample_size=sample_size, seed=3
    )
    assert again == [tau_d]


def test_sample_blocks_one_block_per_stratum_each_block_equally_likely():
    gen = torch.Generator().manual_seed(0)
    numel, block, samples = 1000, 16, 64  # 62 whole blocks, 4 strata
    picks = sample_blocks([numel] * 4000, samples, block, gen, torch.device("cpu"))
    assert picks.shape == (4000, 4)
    # Stratum j spans blocks [15.5 j, 15.5 (j + 1)): a boundary block belongs to two strata.
    j = torch.arange(4, dtype=torch.float64)
    assert ((picks >= (j * 15.5).floor()) & (picks < ((j + 1) * 15.5).ceil())).all()
    freq = torch.bincount(picks.flatten(), minlength=62).double() / picks.numel()
    # Each block's frequency is 1/62 up to sampling noise (sd 8e-4 at 16000 draws).
    assert (freq - 1 / 62).abs().max() < 4e-3
    assert picks.max() < numel // block  # the 8-coordinate tail is never drawn


def test_block_sample_on_row_structured_gradients():
    """Neighbouring coordinates share a row's scale, as in a weight gradient: the stratified sample of
    blocks of 16 stays near an independent sample's rank error (sd 3.3e-3 at q = 0.9, 2**14
    samples of which half are same-sign), and unbiased."""
    gen = torch.Generator().manual_seed(0)
    g_r = torch.randn(1024, 1024, generator=gen) * torch.rand(1024, 1, generator=gen).mul(4).exp()
    g_f = torch.randn(1024, 1024, generator=gen) * torch.rand(1024, 1, generator=gen).mul(4).exp()
    population = (g_r.abs() - g_f.abs())[same_sign(g_r, g_f)].sort().values
    errors = []
    for seed in range(40):
        (tau,), _ = magnitude_thresholds([g_r], [g_f], 0.9, None, seed=seed)
        rank = torch.searchsorted(population, torch.tensor(tau), right=True).item() / population.numel()
        errors.append(rank - 0.9)
    errors = torch.tensor(errors, dtype=torch.float64)
    assert errors.pow(2).mean().sqrt() < 2 * 3.3e-3
    assert errors.mean().abs() < 3 * 3.3e-3 / 40**0.5 * 2  # bias well below the noise


def test_batched_thresholds_match_one_tensor_at_a_time():
    """Exact rows (small tensors), sampled rows and a wide exact tensor, in chunks of rows, give each
    tensor the threshold it gets alone."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(300,), (64, 64), (70_000,), (5,), (40_000,)]
    g_r = [torch.randn(s, generator=gen) for s in shapes]
    g_f = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    kw = dict(max_exact=50_000, sample_size=2**12)  # (40_000,) is exact and wider than a row
    together = magnitude_thresholds(g_r, g_f, 0.8, 0.7, **kw)
    for i in (0, 1, 3, 4):
        alone = magnitude_thresholds([g_r[i]], [g_f[i]], 0.8, 0.7, **kw)
        assert (together[0][i], together[1][i]) == pytest.approx((alone[0][0], alone[1][0]), rel=1e-6)
        diff = g_r[i].abs().flatten() - g_f[i].float().abs().flatten()
        same = diff[same_sign(g_r[i], g_f[i].float()).flatten()]
        assert together[0][i] == pytest.approx(torch.quantile(same, 0.8).item(), rel=1e-5)
    # The sampled tensor: deterministic in the seed.
    assert magnitude_thresholds(g_r, g_f, 0.8, 0.7, **kw) == together
