"""Seeded, stratified cross-validation splits in nnU-Net's ``splits_final.json`` format."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from nnunet_ext.data.metadata import UNLABELED, DatasetMetadata, save_json_atomic

SPLITS_FILE = "splits_final.json"
SPLIT_SEED = 12345  # nnU-Net's own seed for its default split


def stratified_splits(case_ids: list[str], metadata: DatasetMetadata, n_splits: int = 5,
                      seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Stratified K-fold over ``case_ids`` by class label; unlabeled cases form a stratum of their own.

    Falls back to a plain seeded K-fold (what nnU-Net does) when a stratum has fewer than ``n_splits`` cases,
    because stratification is then impossible.
    """
    ids = sorted(case_ids)
    if len(ids) < n_splits:
        raise ValueError(f"Cannot make {n_splits} folds from {len(ids)} cases. Fix: add cases or write your own "
                         f"{SPLITS_FILE}.")
    y = metadata.class_targets(ids)
    counts = Counter(y.tolist())
    if min(counts.values()) >= n_splits:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(ids, y)
    else:
        folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(ids)
    arr = np.array(ids)
    return [{"train": sorted(arr[tr].tolist()), "val": sorted(arr[va].tolist())} for tr, va in folds]


def write_stratified_splits_if_missing(preprocessed_dataset_folder: str, case_ids: list[str],
                                       metadata: DatasetMetadata | None, n_splits: int = 5) -> str | None:
    """Write a stratified ``splits_final.json`` when class labels exist and no split file is present.

    An existing split file is never touched. Returns the path written, or ``None`` when nothing was written.
    """
    path = os.path.join(preprocessed_dataset_folder, SPLITS_FILE)
    if os.path.isfile(path) or metadata is None or not metadata.has_classification or len(case_ids) < n_splits:
        return None  # fewer cases than folds: nothing to stratify (train fold "all", as nnU-Net requires)
    if not any(c != UNLABELED for c in metadata.class_targets(case_ids)):
        return None
    save_json_atomic(stratified_splits(case_ids, metadata, n_splits), path)
    return path
