"""Statistics over cases: bootstrap confidence intervals, paired tests, DeLong's test for correlated AUCs.

Conventions (every report states them):

* **Bootstrap**: non-parametric, resampling *cases* with replacement (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993). ``n_boot`` resamples (default :data:`DEFAULT_N_BOOTSTRAP` = 2000) drawn from
  ``numpy.random.default_rng(seed)`` (default seed 0), so every number is reproducible. Intervals are percentile
  intervals (2.5th and 97.5th percentiles of the resampled statistic). Paired comparisons resample the same case
  indices for both methods. Resamples on which a statistic is undefined (e.g. an AUC when a resample holds one
  class only) are dropped; the number kept is reported.
* **Bootstrap p-value** of a paired difference: two-sided normal approximation with the bootstrap standard error,
  ``p = 2 (1 - Phi(|delta| / se_boot))``.
* **Wilcoxon signed-rank** (paired per-case scores, two-sided; ``scipy.stats.wilcoxon`` with ``zero_method="wilcox"``:
  zero differences are dropped, exact distribution for small samples without ties, normal approximation otherwise).
  All differences zero gives p = 1.
* **DeLong's test** for two correlated ROC AUCs on the same cases (DeLong, DeLong & Clarke-Pearson, Biometrics
  44:837-845, 1988), computed with the fast structural-components algorithm of Sun & Xu (IEEE Signal Processing
  Letters 21:1389-1393, 2014): midranks give the placement values ``V10`` (positives) and ``V01`` (negatives) in
  O(n log n), ``S = cov(V10)/m + cov(V01)/n``, ``z = (AUC_a - AUC_b) / sqrt(S_aa + S_bb - 2 S_ab)``.
* **Holm** step-down adjustment (Holm, Scand. J. Statistics 6:65-70, 1979) over the methods compared with the
  reference on one metric.
* **McNemar's exact test** on paired correct/incorrect case-level predictions (binomial test on discordant pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_N_BOOTSTRAP = 2000
DEFAULT_SEED = 0
ALPHA = 0.05


# --------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n_cases: int, n_boot: int = DEFAULT_N_BOOTSTRAP, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n_boot, n_cases) int array of case indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval, bootstrap standard error and the number of
    resamples on which the statistic was defined."""

    estimate: float
    low: float
    high: float
    se: float
    n_boot: int

    @property
    def p_value(self) -> float:
        """Two-sided p-value of ``estimate == 0`` from the normal approximation with the bootstrap SE."""
        if not np.isfinite(self.estimate) or not np.isfinite(self.se):
            return math.nan
        if self.se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * stats.norm.sf(abs(self.estimate) / self.se))


def percentile_interval(estimate: float, samples: np.ndarray, alpha: float = ALPHA) -> Interval:
    """Percentile interval of bootstrap ``samples`` (NaNs dropped) around ``estimate``."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0 or not np.isfinite(estimate):
        return Interval(float(estimate), math.nan, math.nan, math.nan, int(s.size))
    lo, hi = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    se = float(s.std(ddof=1)) if s.size > 1 else math.nan
    return Interval(float(estimate), float(lo), float(hi), se, int(s.size))


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_cases: int, n_boot: int = DEFAULT_N_BOOTSTRAP,
              seed: int = DEFAULT_SEED, alpha: float = ALPHA) -> Interval:
    """Bootstrap a statistic given as a vectorised function of case indices.

    ``statistic(idx)`` takes an int array (B, n_cases) of case indices and returns (B,) values (NaN where
    undefined); it is called once with ``arange(n_cases)[None]`` for the point estimate and once with all resamples.
    """
    if n_cases == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    estimate = float(statistic(np.arange(n_cases)[None])[0])
    samples = statistic(bootstrap_indices(n_cases, n_boot, seed))
    return percentile_interval(estimate, samples, alpha)


def bootstrap_mean(values: Sequence[float], n_boot: int = DEFAULT_N_BOOTSTRAP, seed: int = DEFAULT_SEED) -> Interval:
    """Mean of per-case ``values`` (N,) with its bootstrap interval (non-finite values are an error upstream)."""
    v = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: v[idx].mean(1), len(v), n_boot, seed)


def paired_bootstrap_mean_difference(a: Sequence[float], b: Sequence[float], n_boot: int = DEFAULT_N_BOOTSTRAP,
                                     seed: int = DEFAULT_SEED) -> Interval:
    """Mean of ``a - b`` over paired cases (N,) with its bootstrap interval and p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return bootstrap(lambda idx: d[idx].mean(1), len(d), n_boot, seed)


# --------------------------------------------------------------------------- descriptive
def describe(values: Sequence[float], n_boot: int = DEFAULT_N_BOOTSTRAP, seed: int = DEFAULT_SEED) -> dict:
    """n, mean, sd (ddof 1), median, quartiles and the bootstrap 95% CI of the mean of per-case ``values``."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "median": math.nan, "q1": math.nan, "q3": math.nan,
                "ci_low": math.nan, "ci_high": math.nan}
    ci = bootstrap_mean(v, n_boot, seed)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
            "median": float(med), "q1": float(q1), "q3": float(q3), "ci_low": ci.low, "ci_high": ci.high}


# --------------------------------------------------------------------------- paired tests
def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired per-case scores (see module docstring)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired correct/incorrect predictions (N,) of two classifiers."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order); NaNs stay NaN and do not count towards the number of tests."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


# --------------------------------------------------------------------------- AUC
def rank_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC as the normalised Mann-Whitney U statistic (ties count 1/2; Hanley & McNeil, Radiology 143:29, 1982),
    vectorised over leading axes: ``positive`` bool and ``scores`` float of shape (..., N) -> (...,), NaN where one
    class is absent."""
    pos = np.asarray(positive, bool)
    ranks = stats.rankdata(np.asarray(scores, dtype=float), axis=-1)
    n1 = pos.sum(-1).astype(float)
    n0 = pos.shape[-1] - n1
    u = (ranks * pos).sum(-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def bootstrap_auc(positive: Sequence[bool], scores: Sequence[float], n_boot: int = DEFAULT_N_BOOTSTRAP,
                  seed: int = DEFAULT_SEED) -> Interval:
    """Binary AUC (N,) with its bootstrap percentile interval."""
    y, s = np.asarray(positive, bool), np.asarray(scores, dtype=float)
    return bootstrap(lambda idx: rank_auc(y[idx], s[idx]), len(y), n_boot, seed)


@dataclass(frozen=True)
class DeLongResult:
    """DeLong comparison of two AUCs on the same cases: ``diff = auc_a - auc_b``, its standard error, z and the
    two-sided p-value."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (average ranks, 1-based) along the last axis."""
    return stats.rankdata(x, axis=-1)


def delong_covariance(positive: Sequence[bool], scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k) for ``k`` score vectors ``scores`` (k, N) of the same
    N cases with binary truth ``positive`` (N,) (Sun & Xu 2014, Algorithm 1). Needs >= 2 positives and negatives."""
    y = np.asarray(positive, bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    x_pos, x_neg = s[:, y], s[:, ~y]
    m, n = x_pos.shape[1], x_neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two positive and two negative cases (got {m} and {n})")
    t_x, t_y = _midranks(x_pos), _midranks(x_neg)
    t_z = _midranks(np.concatenate([x_pos, x_neg], axis=1))
    aucs = (t_z[:, :m].sum(1) / m - (m + 1) / 2) / n
    v10 = (t_z[:, :m] - t_x) / n
    v01 = 1.0 - (t_z[:, m:] - t_y) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_test(positive: Sequence[bool], scores_a: Sequence[float], scores_b: Sequence[float]) -> DeLongResult:
    """DeLong's test of ``AUC(scores_a) == AUC(scores_b)`` on the same cases (two-sided). NaN results when a class
    has fewer than two cases."""
    y = np.asarray(positive, bool)
    if min(int(y.sum()), int((~y).sum())) < 2:
        return DeLongResult(*(math.nan,) * 6)
    aucs, cov = delong_covariance(y, np.vstack([scores_a, scores_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se == 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, p)


def format_p(p: float) -> str:
    """p-value for a table: ``<0.001``, three decimals, or ``n/a``."""
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
