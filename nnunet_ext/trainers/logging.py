"""Per-epoch classification metrics in nnU-Net's logger, and their progress plot."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

CLS_LOG_KEYS = ("cls_train_losses", "cls_val_loss", "cls_val_accuracy", "cls_val_auc")


def add_log_keys(meta_logger, fill_to: int = 0) -> None:
    """Register our keys in nnU-Net's LocalLogger (it asserts on unknown keys and checkpoints the dict whole).

    ``fill_to`` pads missing keys with NaN up to that many epochs, for checkpoints written without them."""
    store = meta_logger.local_logger.my_fantastic_logging
    for k in CLS_LOG_KEYS:
        values = store.setdefault(k, [])
        values.extend([float("nan")] * max(0, fill_to - len(values)))


def plot_classification_progress(meta_logger, output_folder: str) -> str:
    """Write ``progress_classification.png``: train/val classification loss, val accuracy and AUC per epoch."""
    from nnunet_ext.evaluation.plots import default_style

    with default_style():
        return _plot(meta_logger.local_logger.my_fantastic_logging, output_folder)


def _plot(store: dict, output_folder: str) -> str:
    n = min(len(store[k]) for k in CLS_LOG_KEYS)
    epochs = list(range(n))
    fig, (ax_loss, ax_metric) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    ax_loss.plot(epochs, store["cls_train_losses"][:n], "b-", label="train CE (lesion patches)")
    ax_loss.plot(epochs, store["cls_val_loss"][:n], "r-", label="val CE (lesion patches)")
    ax_loss.set_ylabel("classification loss")
    ax_loss.legend(loc="upper right")
    ax_metric.plot(epochs, store["cls_val_accuracy"][:n], "g-", label="val accuracy")
    ax_metric.plot(epochs, store["cls_val_auc"][:n], "m-", label="val macro AUC (one-vs-rest)")
    ax_metric.set_ylim(0, 1.02)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("patch-level metric")
    ax_metric.legend(loc="lower right")
    fig.suptitle("Classification head, per epoch (patch level; case-level results: validation/)")
    fig.tight_layout()
    path = os.path.join(output_folder, "progress_classification.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
