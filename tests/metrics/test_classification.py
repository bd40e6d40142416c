"""Classification metrics against scikit-learn, and the bootstrap built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score, top_k_accuracy_score

from nnunet_ext.metrics.classification import (
    bootstrap_classification,
    classification_summary,
    macro_auc,
    paired_bootstrap_classification,
)

NAMES = ["a", "b", "c"]


def _data(n=90, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_summary_matches_sklearn():
    y, p = _data()
    s = classification_summary(y, p, NAMES)
    pred = p.argmax(1)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert s["auc_ovr_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for c, name in enumerate(NAMES):
        assert s["auc_per_class"][name] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert s["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert s["precision_weighted"] == pytest.approx(precision_score(y, pred, average="weighted", zero_division=0))
    assert s["recall_weighted"] == pytest.approx(recall_score(y, pred, average="weighted"))
    assert s["top_k_accuracy"]["2"] == pytest.approx(top_k_accuracy_score(y, p, k=2, labels=[0, 1, 2]))


def test_binary_macro_auc_is_the_auc_of_class_1():
    y, p = _data(k=2, seed=1)
    s = classification_summary(y, p, ["neg", "pos"])
    assert s["auc_ovr_macro"] == pytest.approx(roc_auc_score(y, p[:, 1]))


def test_macro_rule_vectorised():
    assert macro_auc([0.8, math.nan, 0.6]) == pytest.approx(0.7)
    assert math.isnan(macro_auc([0.8, math.nan, math.nan]))
    out = macro_auc(np.array([[0.8, math.nan, 0.6], [0.5, 0.7, 0.9]]))
    assert out == pytest.approx([0.7, 0.7])


def test_bootstrap_point_estimates_equal_the_summary():
    y, p = _data(n=60, seed=2)
    s = classification_summary(y, p, NAMES)
    iv = bootstrap_classification(y, p, n_boot=300)
    assert iv["accuracy"].estimate == pytest.approx(s["accuracy"])
    assert iv["auc_ovr_macro"].estimate == pytest.approx(s["auc_ovr_macro"])
    assert iv["auc_ovr_macro"].low <= s["auc_ovr_macro"] <= iv["auc_ovr_macro"].high
    for c, name in enumerate(NAMES):
        assert iv["auc_per_class"][c].estimate == pytest.approx(s["auc_per_class"][name])


def test_paired_bootstrap_of_a_better_classifier():
    y, p = _data(n=120, seed=3)
    rng = np.random.default_rng(4)
    worse = 0.5 * p + 0.5 * rng.dirichlet(np.ones(3), len(y))
    d = paired_bootstrap_classification(y, p, worse, n_boot=500)
    sa, sb = classification_summary(y, p, NAMES), classification_summary(y, worse, NAMES)
    assert d["auc_ovr_macro"].estimate == pytest.approx(sa["auc_ovr_macro"] - sb["auc_ovr_macro"])
    assert d["accuracy"].estimate == pytest.approx(sa["accuracy"] - sb["accuracy"])
    assert d["auc_ovr_macro"].low > 0 and d["auc_ovr_macro"].p_value < 0.05


def test_benchmark_classification_summary_uses_delong_per_class_and_holm():
    from nnunet_ext.evaluation.benchmark import summarise_classification
    from nnunet_ext.metrics import statistics as st

    y, p = _data(n=60, seed=5)
    rng = np.random.default_rng(6)
    probs = {"ref": p, "worse": 0.5 * p + 0.5 * rng.dirichlet(np.ones(3), len(y)),
             "same": p.copy()}
    out = summarise_classification(y, probs, NAMES, "ref", n_boot=200)
    assert "vs_reference" not in out["ref"]
    for c in range(3):
        expected = st.delong_test(y == c, probs["worse"][:, c], p[:, c])
        assert out["worse"]["delong"][c] == expected
        assert expected.auc_b == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert out["same"]["delong"][0].p_value == 1.0 and out["same"]["p_mcnemar"] == 1.0
    raw = [out[m]["vs_reference"]["auc_ovr_macro"].p_value for m in ("worse", "same")]
    assert [out[m]["p_holm"]["auc_ovr_macro"] for m in ("worse", "same")] == pytest.approx(st.holm(raw))


def test_per_class_sensitivity_specificity_and_f1():
    """Per-class one-vs-rest rates against scikit-learn and by hand; NaN where a rate is undefined (JSON null)."""
    from sklearn.metrics import recall_score

    y, p = _data(seed=3)
    s = classification_summary(y, p, NAMES)
    pred = p.argmax(1)
    f1 = f1_score(y, pred, average=None, labels=[0, 1, 2])
    for c, name in enumerate(NAMES):
        assert s["sensitivity_per_class"][name] == pytest.approx(recall_score(y == c, pred == c))
        assert s["specificity_per_class"][name] == pytest.approx(recall_score(y != c, pred != c))
        assert s["f1_per_class"][name] == pytest.approx(f1[c])
    assert s["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    # class "c" absent and never predicted: its sensitivity and F1 are undefined, its specificity is 1
    y2 = np.array([0, 0, 1, 1])
    p2 = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.3, 0.7, 0.0]])
    s2 = classification_summary(y2, p2, NAMES)
    assert s2["sensitivity_per_class"] == pytest.approx({"a": 0.5, "b": 1.0, "c": math.nan}, nan_ok=True)
    assert s2["specificity_per_class"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0})
    assert math.isnan(s2["f1_per_class"]["c"]) and s2["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
