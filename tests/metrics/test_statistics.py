"""Statistics: AUC and DeLong against scikit-learn and a paired bootstrap, bootstrap CIs, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from nnunet_ext.metrics import statistics as st


def _scores(n=150, seed=0, ties=False):
    """Binary truth and two correlated scores, the first more informative."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    latent = rng.normal(size=n)
    a = y * 1.2 + latent + 0.6 * rng.normal(size=n)
    b = y * 0.7 + latent + 0.6 * rng.normal(size=n)
    if ties:
        a, b = np.round(a), np.round(b)
    return y, a, b


@pytest.mark.parametrize("ties", [False, True])
def test_rank_auc_equals_sklearn_including_ties_and_batches(ties):
    y, a, b = _scores(ties=ties)
    assert st.rank_auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    batch = st.rank_auc(np.stack([y, y]), np.stack([a, b]))
    assert batch == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)], abs=1e-12)
    assert math.isnan(float(st.rank_auc(np.ones(5, bool), np.arange(5))))


@pytest.mark.parametrize("ties", [False, True])
def test_delong_aucs_match_sklearn_and_variance_matches_paired_bootstrap(ties):
    y, a, b = _scores(n=200, seed=1, ties=ties)
    res = st.delong_test(y, a, b)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    # the DeLong SE of the AUC difference is an asymptotic estimate of what a paired bootstrap measures
    boot = st.bootstrap(lambda idx: st.rank_auc(y[idx], a[idx]) - st.rank_auc(y[idx], b[idx]), len(y), 4000, 0)
    assert boot.estimate == pytest.approx(res.diff, abs=1e-12)
    assert res.se == pytest.approx(boot.se, rel=0.05)
    assert res.p_value == pytest.approx(boot.p_value, abs=0.03)


def test_delong_single_auc_variance_matches_hanley_mcneil_order_and_bootstrap():
    y, a, _ = _scores(n=300, seed=2)
    aucs, cov = st.delong_covariance(y, a[None])
    boot = st.bootstrap_auc(y, a, 4000, 0)
    assert aucs[0] == pytest.approx(boot.estimate)
    assert math.sqrt(cov[0, 0]) == pytest.approx(boot.se, rel=0.1)


def test_delong_hand_example():
    """m = n = 2, scores without ties: positives (0.9, 0.4), negatives (0.6, 0.1).

    Placements V10 (fraction of negatives below each positive) = (1, 0.5); V01 (fraction of positives above each
    negative) = (0.5, 1). AUC = 0.75; S10 = var(1, 0.5) = 0.125, S01 = 0.125; var = 0.125/2 + 0.125/2 = 0.125.
    """
    y = np.array([1, 1, 0, 0], bool)
    aucs, cov = st.delong_covariance(y, np.array([[0.9, 0.4, 0.6, 0.1]]))
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125)


def test_delong_identical_and_degenerate_inputs():
    y, a, _ = _scores(n=40, seed=3)
    same = st.delong_test(y, a, a)
    assert same.diff == 0 and same.p_value == 1.0
    few = st.delong_test(np.array([1, 0, 0, 0], bool), np.arange(4.0), np.arange(4.0)[::-1])
    assert math.isnan(few.p_value)


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 2.0, 80)
    a = st.bootstrap_mean(v, 2000, seed=5)
    b = st.bootstrap_mean(v, 2000, seed=5)
    assert a == b
    assert a.estimate == pytest.approx(v.mean())
    assert a.low < v.mean() < a.high
    # close to the t interval for a mean
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    assert (a.high - a.low) / 2 == pytest.approx(half, rel=0.15)
    assert a.n_boot == 2000


def test_paired_difference_wilcoxon_holm_mcnemar():
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.6, 0.88, 0.91])
    b = a - np.array([0.05, 0.02, 0.04, -0.01, 0.06, 0.03, 0.02, 0.05])
    d = st.paired_bootstrap_mean_difference(a, b)
    assert d.estimate == pytest.approx(np.mean(a - b))
    assert st.wilcoxon_paired(a, b) == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert st.wilcoxon_paired(a, a) == 1.0
    assert math.isnan(st.wilcoxon_paired([], []))
    assert st.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    # McNemar: 6 discordant pairs, 5 favour a -> two-sided binomial p = 2 * (1 + 6) / 64
    ca = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    cb = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
    assert st.mcnemar_exact(ca, cb) == pytest.approx(14 / 64)
    assert st.mcnemar_exact(ca, ca) == 1.0


def test_format_p():
    assert st.format_p(0.0001) == "<0.001"
    assert st.format_p(0.0456) == "0.046"
    assert st.format_p(math.nan) == "n/a"
