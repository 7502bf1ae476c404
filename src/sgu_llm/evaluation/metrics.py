"""TOFU / MUSE metrics as pure functions of per-example values (numpy in, numbers out).

Conventions follow the reference framework (see docs in README): NLLs are
length-normalised (mean over answer tokens), probabilities are exp(-NLL).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats

# The nine numbers whose harmonic mean is model utility, as named in our aggregates.
MODEL_UTILITY_KEYS = (
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "real_authors_prob",
    "real_authors_rouge",
    "real_authors_truth_ratio",
    "world_facts_prob",
    "world_facts_rouge",
    "world_facts_truth_ratio",
)


def truth_ratio(correct_nll: np.ndarray, wrong_nll: np.ndarray) -> np.ndarray:
    """R = P_wrong / P_correct per example.

    `correct_nll` is (n,), `wrong_nll` (n, k); P_wrong is the geometric mean of
    the k wrong answers' probabilities, exp(-mean_j NLL_j).

    Example:
        >>> truth_ratio(np.array([1.0]), np.array([[1.0, 3.0]])).round(4).tolist()
        [0.3679]
    """
    return np.exp(np.asarray(correct_nll) - np.asarray(wrong_nll).mean(axis=1))


def forget_truth_ratio_score(ratios: np.ndarray) -> float:
    """Forget-set aggregate: mean(min(R, 1/R)); 1 means indifferent between right and wrong answers."""
    r = np.asarray(ratios)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def outranks(correct_nll: np.ndarray, wrong_nll: np.ndarray) -> np.ndarray:
    """Per row: does the true answer (lower NLL) outrank every one of its wrong answers?

    The audit statistic of how many facts a model still ranks first; a model that never saw them sits near
    1 / (k + 1) for k wrong answers on random values, higher where priors help.

    Example:
        >>> outranks(np.array([1.0, 2.0]), np.array([[1.5, 3.0], [1.0, 4.0]])).tolist()
        [True, False]
    """
    return np.asarray(correct_nll) < np.asarray(wrong_nll).min(axis=1)


def retain_truth_ratio_score(ratios: np.ndarray) -> float:
    """Aggregate elsewhere: mean(max(0, 1 - R)); high when the right answer is clearly preferred."""
    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(ratios))))


def normalised_probability(correct_nll: np.ndarray, wrong_nll: np.ndarray) -> np.ndarray:
    """p_correct / (p_correct + sum_j p_wrong_j) per example."""
    pc = np.exp(-np.asarray(correct_nll))
    pw = np.exp(-np.asarray(wrong_nll)).sum(axis=1)
    return pc / (pc + pw)


def forget_quality(unlearned_ratios: np.ndarray, retain_ratios: np.ndarray) -> float:
    """p-value of the two-sample KS test between forget-set truth ratios of the unlearned and retain models."""
    return float(stats.ks_2samp(np.asarray(unlearned_ratios), np.asarray(retain_ratios)).pvalue)


def model_utility(aggregates: dict[str, float]) -> float:
    """Harmonic mean of the nine utility numbers (0 if any is 0)."""
    values = [aggregates[k] for k in MODEL_UTILITY_KEYS]
    if min(values) <= 0:
        return 0.0
    return float(stats.hmean(values))


def auc(scores_label0: np.ndarray, scores_label1: np.ndarray) -> float:
    """ROC AUC of separating label 1 (higher scores) from label 0, ties counted half (Mann-Whitney).

    Example:
        >>> auc(np.array([0.1, 0.2]), np.array([0.3, 0.4]))
        1.0
    """
    s0, s1 = np.asarray(scores_label0, dtype=float), np.asarray(scores_label1, dtype=float)
    ranks = stats.rankdata(np.concatenate([s0, s1]))
    r1 = ranks[len(s0) :].sum()
    return float((r1 - len(s1) * (len(s1) + 1) / 2) / (len(s0) * len(s1)))


def privleak(auc_value: float, auc_ref: float = 0.5) -> float:
    """((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100: near 0 is best."""
    return float(((1 - auc_value) - (1 - auc_ref)) / (1 - auc_ref) * 100)


def min_k(values: np.ndarray, k: float) -> float:
    """-mean of the lowest `k` fraction of per-token values (log-probs, or Min-K%++'s z-scores)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = max(1, int(len(v) * k))
    return float(-v[:n].mean())


def answer_known(generations: list[str], answers: list[str]) -> np.ndarray:
    """Whether each generation states its reference answer (case-insensitive substring): a plain
    "does the model know it" count for short factual answers (capitals, numbers).

    Example:
        >>> answer_known(["The capital of France is Paris.", "I don't know"], ["Paris", "Rome"]).tolist()
        [True, False]
    """
    return np.array([a.strip().lower() in g.lower() for g, a in zip(generations, answers)])


def ks_d(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Two-sample KS statistic D = sup |F_a - F_b| (`scipy.stats.ks_2samp`'s statistic), a size-free effect
    size beside forget quality's p-value. Batched over leading axes: `a` (..., n), `b` (..., m) give (...).

    Example:
        >>> ks_d(np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.5, 4.5]))
        0.6666666666666666
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n, m = a.shape[-1], b.shape[-1]
    z = np.concatenate([a, b], axis=-1)
    order = np.argsort(z, axis=-1, kind="stable")
    zs = np.take_along_axis(z, order, axis=-1)
    step = np.where(order < n, 1.0 / n, -1.0 / m)
    diff = np.cumsum(step, axis=-1)
    # The ECDFs differ only after the last of tied values: positions inside a tie group do not count.
    last = np.ones_like(zs, dtype=bool)
    last[..., :-1] = zs[..., 1:] != zs[..., :-1]
    d = np.max(np.where(last, np.abs(diff), 0.0), axis=-1)
    return float(d) if d.ndim == 0 else d


def ks_d_ci(
    a: np.ndarray, b: np.ndarray, *, nominal: float = 0.99, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95 % bootstrap CI of `ks_d(a, b)` that resamples rows, paired (row i of `a` and of `b` answer the same
    question).

    D is biased upward under resampling (near 0 a resample's D is mostly noise), so a plain percentile interval
    sits above the truth (it never covers D = 0); this is the basic (reverse-percentile) interval
    [2D - q_hi, 2D - q_lo], clipped to [0, 1], which moves the interval down by the bootstrap's bias. At the
    nominal 0.95 that interval under-covers (measured 0.85-0.91 for true D of 0.1-0.4 and 0.69-0.78 at D = 0, on
    100-400 paired rows), so its quantiles are taken at `nominal` 0.99: measured coverage of the true D then
    0.96-0.99 for D >= 0.2 and 0.87-0.94 at D = 0 (`tests/test_metrics.py` checks it on hand-built pairs).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"ks_d_ci pairs rows: a and b must be 1-d of one length, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    boot = ks_d(a[idx], b[idx])
    d = ks_d(a, b)
    alpha = (1 - nominal) / 2
    lo_q, hi_q = np.quantile(boot, [alpha, 1 - alpha])
    return float(np.clip(2 * d - hi_q, 0, 1)), float(np.clip(2 * d - lo_q, 0, 1))


@functools.lru_cache(maxsize=16)
def _ks_lattice(n: int) -> np.ndarray:
    """The two-sample KS p-value at D = k / n, k = 0..n, for n and n rows (shifting one sample of n distinct values
    by k makes D = k / n exactly)."""
    base = np.arange(n, dtype=float)
    return np.array([forget_quality(base + k, base) for k in range(n + 1)])


def ks_d_from_pvalue(pvalue: float, n: int, m: int | None = None, rtol: float = 1e-6) -> float:
    """The KS distance D behind a stored forget quality (`forget_quality` on `n` and `m` rows): the two-sample
    p-value is a strictly decreasing function of D, which lives on a lattice of step 1/n when n = m, so the
    lattice point whose p-value is `pvalue` is the D (evaluations stored before D was).

    Raises ValueError when no lattice point gives `pvalue` (it was not a KS p-value on n and m rows).

    Example:
        >>> round(ks_d_from_pvalue(forget_quality(np.arange(40.0), np.arange(40.0) + 4), 40), 6)
        0.1
    """
    m = n if m is None else m
    if n != m:
        raise ValueError(f"ks_d_from_pvalue inverts paired forget quality (n = m); got n={n}, m={m}")
    hit = np.flatnonzero(np.isclose(_ks_lattice(n), pvalue, rtol=rtol, atol=1e-300))
    if not hit.size:
        raise ValueError(f"{pvalue!r} is not a two-sample KS p-value on {n} and {m} rows")
    return int(hit[0]) / n


def paired_mean_ci(diffs: np.ndarray, confidence: float = 0.95, resamples: int = 9999, seed: int = 0) -> dict:
    """The mean of paired differences (one per model seed), its percentile bootstrap CI (scipy) over seeds, and the
    sign count: `{"mean", "ci": [lo, hi], "n", "below_zero", "above_zero"}`. With fewer than 2 differences the CI
    is None."""
    d = np.asarray(diffs, dtype=float)
    out = {"mean": float(d.mean()) if d.size else None, "n": int(d.size),
           "below_zero": int((d < 0).sum()), "above_zero": int((d > 0).sum()), "ci": None}
    if d.size >= 2:
        if np.all(d == d[0]):  # every resample has the same mean
            out["ci"] = [float(d[0]), float(d[0])]
        else:
            res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=resamples,
                                  method="percentile", rng=np.random.default_rng(seed))
            out["ci"] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return out


def verdict(ci: list[float] | None, lower_is_better: bool = True) -> str:
    """`helps` when the CI of (rule - alone) lies wholly on the better side of 0, `hurts` wholly on the worse side,
    else `undecided` (also with no CI)."""
    if ci is None or ci[0] <= 0 <= ci[1]:
        return "undecided"
    better = ci[1] < 0 if lower_is_better else ci[0] > 0
    return "helps" if better else "hurts"
