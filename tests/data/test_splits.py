from __future__ import annotations

import json

import numpy as np

from nnunet_ext.data.metadata import CaseRecord, DatasetMetadata
from nnunet_ext.data.splits import stratified_splits, write_stratified_splits_if_missing


def _metadata(n: int, n_classes: int = 3, n_unlabeled: int = 5) -> tuple[list[str], DatasetMetadata]:
    ids = [f"c{i:03d}" for i in range(n)]
    cases = {k: CaseRecord(class_index=None if i >= n - n_unlabeled else i % n_classes) for i, k in enumerate(ids)}
    return ids, DatasetMetadata(class_names=[f"k{i}" for i in range(n_classes)], cases=cases)


def test_folds_are_stratified_disjoint_and_complete():
    ids, md = _metadata(50)
    splits = stratified_splits(ids, md)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(ids) and sum(map(len, vals)) == len(ids)
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        y = md.class_targets(s["val"])
        # 15 cases per class -> exactly 3 per class per fold; 5 unlabeled -> 1 per fold
        assert np.bincount(y[y >= 0], minlength=3).tolist() == [3, 3, 3]
        assert (y == -1).sum() == 1


def test_split_is_seeded():
    ids, md = _metadata(30)
    assert stratified_splits(ids, md) == stratified_splits(list(reversed(ids)), md)


def test_existing_split_is_never_overwritten(tmp_path):
    ids, md = _metadata(20)
    path = write_stratified_splits_if_missing(str(tmp_path), ids, md)
    assert path is not None
    custom = [{"train": ids[:10], "val": ids[10:]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom), encoding="utf-8")
    assert write_stratified_splits_if_missing(str(tmp_path), ids, md) is None
    assert json.loads((tmp_path / "splits_final.json").read_text(encoding="utf-8")) == custom


def test_no_labels_no_split(tmp_path):
    ids, _ = _metadata(10)
    assert write_stratified_splits_if_missing(str(tmp_path), ids, None) is None
    assert not (tmp_path / "splits_final.json").exists()


def test_fewer_cases_than_folds_writes_nothing(tmp_path):
    ids, md = _metadata(4, n_unlabeled=0)
    assert write_stratified_splits_if_missing(str(tmp_path), ids, md) is None
    assert not (tmp_path / "splits_final.json").exists()
