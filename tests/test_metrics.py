"""TOFU/MUSE metric functions against hand computations and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from sgu_llm.evaluation import metrics as M


def test_truth_ratio_and_aggregates():
    correct = np.array([1.0, 2.0])
    wrong = np.array([[1.0, 3.0], [0.5, 0.5]])
    r = M.truth_ratio(correct, wrong)
    assert r[0] == pytest.approx(math.exp(1 - 2))  # P_wrong = exp(-2), P_correct = exp(-1)
    assert r[1] == pytest.approx(math.exp(2 - 0.5))
    assert M.forget_truth_ratio_score(r) == pytest.approx((math.exp(-1) + math.exp(-1.5)) / 2)
    assert M.retain_truth_ratio_score(r) == pytest.approx((1 - math.exp(-1) + 0) / 2)


def test_normalised_probability():
    p = M.normalised_probability(np.array([0.0]), np.array([[math.log(2), math.log(4)]]))
    assert p[0] == pytest.approx(1 / (1 + 0.5 + 0.25))


def test_forget_quality_is_ks_pvalue():
    a, b = np.random.default_rng(0).normal(size=50), np.random.default_rng(1).normal(1, size=40)
    assert M.forget_quality(a, b) == stats.ks_2samp(a, b).pvalue
    assert M.forget_quality(a, a) == 1.0


def test_model_utility_harmonic_mean():
    agg = {k: 0.5 for k in M.MODEL_UTILITY_KEYS}
    assert M.model_utility(agg) == pytest.approx(0.5)
    agg["world_facts_rouge"] = 0.25
    assert M.model_utility(agg) == pytest.approx(9 / (8 / 0.5 + 1 / 0.25))
    agg["retain_prob"] = 0.0
    assert M.model_utility(agg) == 0.0


def test_auc_and_privleak():
    assert M.auc([1, 2], [3, 4]) == 1.0
    assert M.auc([3, 4], [1, 2]) == 0.0
    assert M.auc([1, 2], [1, 2]) == 0.5
    assert M.auc([1, 3], [2, 4]) == pytest.approx(0.75)
    assert M.privleak(0.5) == 0.0
    assert M.privleak(1.0, 0.6) == pytest.approx(-100.0)
    assert M.privleak(0.7, 0.6) == pytest.approx((0.3 - 0.4) / 0.4 * 100)


def test_min_k():
    assert M.min_k(np.array([-5.0, -1.0, -3.0, -2.0, -4.0]), 0.4) == pytest.approx(4.5)  # lowest two: -5, -4
    assert M.min_k(np.array([-1.0]), 0.4) == 1.0  # at least one token


def test_ks_d_equals_scipy_statistic_with_ties_and_batches():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(size=40).round(1), rng.normal(0.3, 1.2, size=60).round(1)  # rounding makes ties
        assert M.ks_d(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    a, b = rng.normal(size=(7, 30)), rng.normal(size=(7, 30))
    assert M.ks_d(a, b) == pytest.approx([stats.ks_2samp(x, y).statistic for x, y in zip(a, b)], abs=1e-12)
    assert M.ks_d(a[0], a[0]) == 0.0


def test_ks_d_ci_covers_the_true_distance_at_the_stated_rate():
    # Hand-built pairs with a known D: row i gives x_i ~ N(0, 1) and y_i = 0.5 x_i + sqrt(0.75) e_i + s, so the two
    # marginals are N(0, 1) and N(s, 1) and the true D = 2 Phi(s / 2) - 1. Bounded and seeded: 80 draws.
    rng = np.random.default_rng(3)
    shift, n, draws = 0.5, 100, 80
    true = 2 * stats.norm.cdf(shift / 2) - 1
    covered = 0
    for r in range(draws):
        x = rng.normal(size=n)
        y = 0.5 * x + math.sqrt(0.75) * rng.normal(size=n) + shift
        lo, hi = M.ks_d_ci(x, y, resamples=500, seed=r)
        assert 0 <= lo <= M.ks_d(x, y) <= hi <= 1
        covered += lo <= true <= hi
    # 95 % stated; 80 draws of a 0.95 coin fall below 0.9 with probability ~3 %: the plain percentile interval
    # (mean coverage ~0.9 here, and 0 at D = 0) and the uncalibrated basic one (~0.9) fail this more often.
    assert covered / draws >= 0.88
    with pytest.raises(ValueError, match="pairs rows"):
        M.ks_d_ci(np.zeros(3), np.zeros(4))
