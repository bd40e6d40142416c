"""``classification.csv`` / ``classification.json`` (and ``summary_classification.json`` when labels are known)."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from nnunet_ext.data.files import match_open_mode
from nnunet_ext.data.metadata import UNLABELED, save_json_atomic
from nnunet_ext.metrics.classification import classification_summary, head_collapse


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


SMALL_SET = 10  # fewer labeled cases than this: the metrics say little


def summary_notes(targets: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Why the accuracy and macro AUC of a set can look contradictory (e.g. "accuracy 0.0000, macro AUC 1.0000"):
    accuracy scores the argmax, the AUC only how the probabilities rank the cases, over the classes present. A
    head that stays at the class prior predicts one class for every case and can still rank two cases
    perfectly."""
    notes = []
    n = len(targets)
    present = sorted({int(v) for v in targets})
    predicted = sorted({int(v) for v in np.asarray(probs).argmax(1)})
    if len(predicted) == 1:
        notes.append(f"every case is predicted {class_names[predicted[0]]!r}: the head does not separate the classes "
                     "by its argmax (accuracy), whatever the AUC, which only ranks the probabilities")
    if len(present) < len(class_names):
        names = ", ".join(repr(class_names[v]) for v in present)
        notes.append(f"only {len(present)} of {len(class_names)} classes occur among the labeled cases ({names}); the "
                     "macro AUC averages over those" + (" and is undefined with one" if len(present) < 2 else ""))
    if n < SMALL_SET:
        notes.append(f"{n} labeled case(s): too few for the accuracy or AUC to say much")
    return notes


def write_classification_outputs(folder: str, case_ids: Sequence[str], probs: np.ndarray,
                                 class_names: Sequence[str], targets: Sequence[int] | None = None,
                                 prior_ce: float | None = None) -> dict | None:
    """Write per-case probabilities; with ``targets`` also the metrics (unlabeled cases, -1, are left out) and
    whether the head has collapsed (:func:`~nnunet_ext.metrics.classification.head_collapse`: nearly the same
    probabilities for every case; ``prior_ce``, the training prior's entropy, sharpens the criterion).

    Files: ``classification.csv`` (case_id, predicted_class, prob_<class>..., [true_class]),
    ``classification.json`` ({case_id: {"predicted_class", "probabilities": {class: p}}}), and
    ``summary_classification.json``. Returns the summary (or None without targets).
    """
    os.makedirs(folder, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    header = ["case_id", "predicted_class"] + [f"prob_{c}" for c in class_names]
    if targets is not None:
        header.append("true_class")
    fd, tmp = tempfile.mkstemp(prefix=".classification.csv.", suffix=".tmp", dir=folder)  # unique per writer
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, k in enumerate(case_ids):
            row = [k, class_names[pred[i]]] + [f"{v:.6f}" for v in probs[i]]
            if targets is not None:
                row.append("" if targets[i] == UNLABELED else class_names[targets[i]])
            w.writerow(row)
    match_open_mode(tmp, os.path.join(folder, "classification.csv"))
    os.replace(tmp, os.path.join(folder, "classification.csv"))
    save_json_atomic({k: {"predicted_class": class_names[pred[i]],
                          "probabilities": dict(zip(class_names, map(float, probs[i])))}
                      for i, k in enumerate(case_ids)}, os.path.join(folder, "classification.json"))
    if targets is None:
        return None
    t = np.asarray(targets)
    labeled = t != UNLABELED
    if labeled.any():
        summary = classification_summary(t[labeled], probs[labeled], class_names)
        summary["n_labeled"] = int(labeled.sum())
        summary["notes"] = summary_notes(t[labeled], probs[labeled], class_names)
        ce = float(-np.mean(np.log(np.clip(probs[labeled][np.arange(int(labeled.sum())), t[labeled]], 1e-12, 1))))
        summary["cross_entropy"] = ce
        summary["head_collapse"] = head_collapse(probs, ce, prior_ce)
        if summary["head_collapse"]["collapsed"]:
            summary["notes"].append(
                f"the head gives nearly the same probabilities for every case (spread "
                f"{summary['head_collapse']['probability_spread']:.4f} < {summary['head_collapse']['threshold']}): it "
                "has collapsed; treat its class probabilities as uninformative")
    else:  # e.g. a validation fold that drew only unlabeled cases: no metric is defined
        summary = {"n_labeled": 0, "note": "no case of this set has a class label: no metrics"}
    summary["n_unlabeled_excluded"] = int((~labeled).sum())
    save_json_atomic(_json_safe(summary), os.path.join(folder, "summary_classification.json"))
    return summary
