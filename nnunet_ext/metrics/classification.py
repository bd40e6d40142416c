"""Case-level classification metrics (accuracy, one-vs-rest AUC, weighted P/R/F1, per-class sensitivity, specificity
and F1, macro F1, top-k, confusion matrix).

Thin, documented wrappers over scikit-learn so that every number in a report comes from one place, plus the
vectorised bootstrap of accuracy and macro AUC used by ``nnunet-ext benchmark``/``robustness`` (the same macro rule,
:func:`macro_auc`, everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score


def per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest ROC AUC of each class; NaN for a class that is absent (or the only one present)."""
    out = []
    for c in range(probs.shape[1]):
        positive = y_true == c
        out.append(float(roc_auc_score(positive, probs[:, c])) if 0 < positive.sum() < len(y_true) else math.nan)
    return out


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of cases whose true class is among the ``k`` most probable (ties broken by class order)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean([y in row for y, row in zip(y_true, top)]))


def per_class_rates(y_true: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, list[float]]:
    """One-vs-rest rates of each class from the predicted (argmax) classes: ``sensitivity`` TP / (TP + FN) (NaN
    when the class is absent), ``specificity`` TN / (TN + FP) (NaN when every case is of that class) and ``f1``
    2 TP / (2 TP + FP + FN) (NaN when the class is neither present nor predicted)."""
    cm = confusion_matrix(np.asarray(y_true, dtype=int), np.asarray(pred, dtype=int),
                          labels=list(range(num_classes))).astype(float)
    tp = np.diag(cm)
    fn, fp = cm.sum(1) - tp, cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return [float(v) for v in np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)]

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def macro_auc(aucs) -> np.ndarray | float:
    """The macro one-vs-rest AUC from per-class AUCs (..., K), NaN for absent classes: for two classes the AUC of
    class 1; otherwise the mean over the finite per-class AUCs, NaN when fewer than two are finite."""
    a = np.asarray(aucs, dtype=float)
    if a.shape[-1] == 2:
        out = a[..., 1]
    else:
        finite = np.isfinite(a)
        count = finite.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(count >= 2, np.where(finite, a, 0.0).sum(-1) / count, np.nan)
    return float(out) if np.ndim(out) == 0 else out


def ovr_aucs(y: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-class one-vs-rest AUCs (B, K) of the case resamples ``idx`` (B, N)."""
    from nnunet_ext.metrics.statistics import rank_auc

    return np.stack([rank_auc(y[idx] == c, probs[idx, c]) for c in range(probs.shape[1])], axis=-1)


def bootstrap_classification(y_true: Sequence[int], probs: np.ndarray, n_boot: int | None = None,
                             seed: int | None = None) -> dict:
    """Bootstrap intervals (resampling cases) of accuracy, macro AUC and each per-class AUC of one classifier:
    labels (N,), probabilities (N, K). Returns {"accuracy": Interval, "auc_ovr_macro": Interval,
    "auc_per_class": [Interval] * K}."""
    from nnunet_ext.metrics import statistics as st

    y, p = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float)
    n_boot = st.DEFAULT_N_BOOTSTRAP if n_boot is None else n_boot
    seed = st.DEFAULT_SEED if seed is None else seed
    correct = (p.argmax(1) == y).astype(float)
    out = {"accuracy": st.bootstrap(lambda idx: correct[idx].mean(1), len(y), n_boot, seed),
           "auc_ovr_macro": st.bootstrap(lambda idx: macro_auc(ovr_aucs(y, p, idx)), len(y), n_boot, seed)}
    out["auc_per_class"] = [st.bootstrap(lambda idx, c=c: st.rank_auc(y[idx] == c, p[idx, c]), len(y), n_boot, seed)
                            for c in range(p.shape[1])]
    return out


def paired_bootstrap_classification(y_true: Sequence[int], probs_a: np.ndarray, probs_b: np.ndarray,
                                    n_boot: int | None = None, seed: int | None = None) -> dict:
    """Paired bootstrap of the differences a - b in accuracy and macro AUC on the same cases (N,), (N, K) x 2.
    Returns {"accuracy": Interval, "auc_ovr_macro": Interval} (``Interval.p_value`` is the bootstrap p-value)."""
    from nnunet_ext.metrics import statistics as st

    y = np.asarray(y_true, dtype=int)
    pa, pb = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    n_boot = st.DEFAULT_N_BOOTSTRAP if n_boot is None else n_boot
    seed = st.DEFAULT_SEED if seed is None else seed
    d_correct = (pa.argmax(1) == y).astype(float) - (pb.argmax(1) == y).astype(float)
    return {"accuracy": st.bootstrap(lambda idx: d_correct[idx].mean(1), len(y), n_boot, seed),
            "auc_ovr_macro": st.bootstrap(
                lambda idx: macro_auc(ovr_aucs(y, pa, idx)) - macro_auc(ovr_aucs(y, pb, idx)), len(y), n_boot, seed)}


def classification_summary(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """All case-level metrics for labels ``y_true`` (N,) and class probabilities ``probs`` (N, K).

    ``auc_ovr_macro`` is the mean of the per-class one-vs-rest AUCs over the classes present (NaN when fewer than
    two classes are present). For two classes it equals the AUC of class 1. Precision/recall/F1 are support-weighted;
    a class that is never predicted contributes precision 0. Per class (one-vs-rest, from the argmax):
    sensitivity, specificity and F1 (:func:`per_class_rates`; NaN where undefined); ``f1_macro`` is the mean of the
    defined per-class F1 values.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(class_names)
    pred = p.argmax(1)
    aucs = per_class_auc(y, p)
    macro = macro_auc(aucs) if k >= 2 else math.nan
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=list(range(k)), average="weighted",
                                                       zero_division=0)
    rates = per_class_rates(y, pred, k)
    defined_f1 = [v for v in rates["f1"] if math.isfinite(v)]
    return {
        "n_cases": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else math.nan,
        "auc_ovr_macro": macro,
        "auc_per_class": dict(zip(class_names, aucs)),
        "precision_weighted": float(prec),
        "recall_weighted": float(rec),
        "f1_weighted": float(f1),
        "f1_macro": float(np.mean(defined_f1)) if defined_f1 else math.nan,
        "sensitivity_per_class": dict(zip(class_names, rates["sensitivity"])),
        "specificity_per_class": dict(zip(class_names, rates["specificity"])),
        "f1_per_class": dict(zip(class_names, rates["f1"])),
        "top_k_accuracy": {str(j): top_k_accuracy(y, p, j) for j in range(1, k + 1)},
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "class_names": list(class_names),
    }


# a head whose class probabilities vary across cases by less than this (mean over classes of the standard deviation
# across cases) gives "nearly the same probabilities for every case": it has collapsed (to the class prior, typically)
COLLAPSE_SPREAD = 0.02


def prior_entropy(targets: Sequence[int], num_classes: int) -> float:
    """Entropy (nats) of the class frequencies of ``targets`` (labels 0..K-1; others ignored): the cross-entropy a
    head reaches by predicting the training prior for every case."""
    t = np.asarray([int(x) for x in targets if 0 <= int(x) < num_classes], dtype=int)
    if t.size == 0:
        return math.nan
    p = np.bincount(t, minlength=num_classes) / t.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def head_collapse(probs: np.ndarray, ce: float | None = None, prior_ce: float | None = None,
                  threshold: float = COLLAPSE_SPREAD) -> dict:
    """Has a classification head collapsed? ``probs`` (N, K): its class probabilities for N cases (or patches).

    ``spread`` is the mean over classes of the standard deviation of the probabilities across the N cases: 0 for a
    head that outputs the same vector for every case. Collapsed when the spread is below ``threshold``; when the
    cross-entropy ``ce`` and the prior's entropy ``prior_ce`` are given, the head must also be no better than the
    prior (``ce >= 0.9 * prior_ce``), so that a head that is confidently right on near-identical cases is not
    flagged. Undefined (None) for fewer than two cases."""
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[0] < 2:
        return {"collapsed": None, "probability_spread": math.nan, "threshold": threshold}
    spread = float(p.std(axis=0).mean())
    collapsed = spread < threshold
    if collapsed and ce is not None and prior_ce is not None and math.isfinite(ce) and math.isfinite(prior_ce):
        collapsed = ce >= 0.9 * prior_ce
    out = {"collapsed": bool(collapsed), "probability_spread": spread, "threshold": threshold}
    if ce is not None:
        out.update(cross_entropy=float(ce), prior_entropy=None if prior_ce is None else float(prior_ce))
    return out
