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
