"""Per-epoch loss terms and classification metrics in nnU-Net's logger, and their progress plot.

nnU-Net's ``LocalLogger`` asserts on keys it does not know and checkpoints its dict whole, so every key is registered
(:func:`ensure_log_key`) before it is first logged; a loss term that appears only in a later epoch is padded with NaN
for the earlier ones. Keys: ``loss_<term>_train`` and ``loss_<term>_val`` for every named loss term (``seg``,
``cls``, each auxiliary loss), and ``cls_val_loss``, ``cls_val_accuracy``, ``cls_val_auc`` (patch level, labeled
lesion patches) for networks with a classification head, and ``cls_val_spread`` / ``cls_val_collapsed``: the spread
of the head's probabilities across those patches and whether it has collapsed to the same output for all of them
(:func:`~nnunet_ext.metrics.classification.head_collapse`).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

CLS_METRIC_KEYS = ("cls_val_loss", "cls_val_accuracy", "cls_val_auc", "cls_val_spread", "cls_val_collapsed")
PROGRESS_FILE = "progress_terms.png"


def term_key(term: str, split: str) -> str:
    """Logger key of loss term ``term`` in ``split`` ("train" or "val")."""
    return f"loss_{term}_{split}"


def ensure_log_key(meta_logger, key: str, epochs: int) -> None:
    """Register ``key`` in nnU-Net's logger, padded with NaN to ``epochs`` entries."""
    values = meta_logger.local_logger.my_fantastic_logging.setdefault(key, [])
    values.extend([float("nan")] * max(0, epochs - len(values)))


def logged_terms(meta_logger) -> list[str]:
    """Names of the loss terms in the logger, in the order first logged."""
    keys = meta_logger.local_logger.my_fantastic_logging
    return [k[len("loss_"):-len("_train")] for k in keys if k.startswith("loss_") and k.endswith("_train")]


def plot_progress(meta_logger, output_folder: str, with_classification: bool) -> str:
    """Write ``progress_terms.png``: each loss term per epoch (train solid, validation dashed, log scale) and, for
    networks with a head, the validation classification accuracy and macro AUC."""
    from nnunet_ext.plotting import default_style

    with default_style():
        return _plot(meta_logger.local_logger.my_fantastic_logging, logged_terms(meta_logger), output_folder,
                     with_classification)


def _finite(values) -> bool:
    return any(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _plot(store: dict, terms: list[str], output_folder: str, with_classification: bool) -> str:
    rows = 2 if with_classification else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 4 * rows), sharex=True, squeeze=False)
    ax_loss = axes[0, 0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    positive = False
    for i, term in enumerate(terms):
        for split, style in (("train", "-o"), ("val", "--o")):
            values = store.get(term_key(term, split), [])
            if _finite(values):
                ax_loss.plot(range(len(values)), values, style, color=colors[i % len(colors)], markersize=3,
                             label=f"{term} ({split})")
                positive = positive or all(v > 0 for v in values if math.isfinite(v))
    if positive:
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss term (unweighted)" + (", log scale" if positive else ""))
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(loc="upper right", fontsize="small", ncol=2)
    if with_classification:
        ax_metric = axes[1, 0]
        for key, style, label in (("cls_val_accuracy", "g-o", "val accuracy"),
                                  ("cls_val_auc", "m-o", "val macro AUC (one-vs-rest)"),
                                  ("cls_val_spread", "c-o", "probability spread across patches")):
            values = store.get(key, [])
            ax_metric.plot(range(len(values)), values, style, markersize=3, label=label)
        collapsed = [e for e, v in enumerate(store.get("cls_val_collapsed", [])) if v == 1.0]
        if collapsed:
            ax_metric.scatter(collapsed, [0.01] * len(collapsed), marker="x", color="red", zorder=3,
                              label="head collapsed (same probabilities for every patch)")
            ax_metric.set_title("WARNING: the classification head collapsed in "
                                f"{len(collapsed)} of {len(store.get('cls_val_collapsed', []))} epochs", color="red")
        ax_metric.set_ylim(0, 1.02)
        ax_metric.set_ylabel("patch-level metric")
        ax_metric.legend(loc="lower right")
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle("Loss terms and classification per epoch (case-level results: validation/)")
    fig.tight_layout()
    path = os.path.join(output_folder, PROGRESS_FILE)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
