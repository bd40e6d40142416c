"""Case-level classification metrics (accuracy, one-vs-rest AUC, weighted P/R/F1, top-k, confusion matrix).

Thin, documented wrappers over scikit-learn so that every number in a report comes from one place.
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


def classification_summary(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """All case-level metrics for labels ``y_true`` (N,) and class probabilities ``probs`` (N, K).

    ``auc_ovr_macro`` is the mean of the per-class one-vs-rest AUCs over the classes present (NaN when fewer than
    two classes are present). For two classes it equals the AUC of class 1. Precision/recall/F1 are support-weighted;
    a class that is never predicted contributes precision 0.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(class_names)
    pred = p.argmax(1)
    aucs = per_class_auc(y, p)
    finite = [a for a in aucs if not math.isnan(a)]
    if k == 2:
        macro = aucs[1]
    else:
        macro = float(np.mean(finite)) if len(finite) >= 2 else math.nan
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=list(range(k)), average="weighted",
                                                       zero_division=0)
    return {
        "n_cases": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else math.nan,
        "auc_ovr_macro": macro,
        "auc_per_class": dict(zip(class_names, aucs)),
        "precision_weighted": float(prec),
        "recall_weighted": float(rec),
        "f1_weighted": float(f1),
        "top_k_accuracy": {str(j): top_k_accuracy(y, p, j) for j in range(1, k + 1)},
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "class_names": list(class_names),
    }
