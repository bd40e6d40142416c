"""The predict output folder: parallel runs keep every row, another model's results and ``-o`` = ``-i`` are refused
before anything runs, and the files are created with the umask's mode, not private."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import numpy as np
import pytest

from nnunet_ext.inference.checks import InputError
from nnunet_ext.inference.outputs import RECORD_FILE, check_output_folder, merge_classifications, model_identity

CLASSES = ["hcc", "meta", "benign"]


def _merge_many(folder: str, worker: int, n: int) -> None:
    for i in range(n):
        merge_classifications(folder, {f"w{worker}_case{i:02d}": np.array([0.2, 0.3, 0.5])}, CLASSES)


def test_parallel_merges_into_one_folder_keep_every_row(tmp_path):
    """Two processes, each adding its cases one by one (as two ``nnunet-ext predict`` runs on different cases into
    one -o do at their end): the read-merge-write under the folder lock loses no row."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_merge_many, args=(str(tmp_path), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads((tmp_path / "classification.json").read_text(encoding="utf-8"))
    expected = {f"w{w}_case{i:02d}" for w in range(2) for i in range(15)}
    assert set(rows) == expected
    csv_ids = {line.split(",")[0] for line in (tmp_path / "classification.csv").read_text().splitlines()[1:]}
    assert csv_ids == expected
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_rows_of_cases_predicted_again_are_replaced(tmp_path):
    merge_classifications(str(tmp_path), {"a": np.array([1.0, 0, 0]), "b": np.array([0, 1.0, 0])}, CLASSES)
    kept = merge_classifications(str(tmp_path), {"b": np.array([0, 0, 1.0])}, CLASSES)
    rows = json.loads((tmp_path / "classification.json").read_text(encoding="utf-8"))
    assert kept == 1 and rows["b"]["predicted_class"] == "benign" and rows["a"]["predicted_class"] == "hcc"


def _model(folder, plans=None):
    os.makedirs(folder / "fold_0")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    (folder / "plans.json").write_text(json.dumps(plans or {"plans_name": "nnUNetPlans"}), encoding="utf-8")
    return str(folder)


def test_output_folder_of_another_model_or_the_input_folder_is_refused(tmp_path):
    a, b = _model(tmp_path / "A"), _model(tmp_path / "B", {"plans_name": "STDNetPlans"})
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    with pytest.raises(InputError, match=r"the output folder \(-o\) is the input folder \(-i\) .*images.*Fix: pass "
                                         r"another -o"):
        check_output_folder(str(images), str(images), a, model_identity(a, None, "checkpoint_final.pth"))
    ident_a = model_identity(a, None, "checkpoint_final.pth")
    assert ident_a["folds"] == ["0"]
    check_output_folder(str(images), str(out), a, ident_a)  # no folder yet
    out.mkdir()
    (out / RECORD_FILE).write_text(json.dumps(ident_a), encoding="utf-8")
    check_output_folder(str(images), str(out), a, ident_a)  # the same model adds cases
    with pytest.raises(InputError, match=r"holds predictions of another model: .*A \(folds 0, checkpoint_final\.pth\); "
                                         r"this run uses .*B .*Fix: choose another output folder"):
        check_output_folder(str(images), str(out), b, model_identity(b, None, "checkpoint_final.pth"))
    with pytest.raises(InputError, match="another model"):  # same folder, other folds
        check_output_folder(str(images), str(out), a, model_identity(a, ["0", "1"], "checkpoint_final.pth"))
    # nnUNetv2_predict's output (no record) of other plans
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "plans.json").write_text(json.dumps({"plans_name": "nnUNetPlans"}), encoding="utf-8")
    check_output_folder(str(images), str(stock), a, ident_a)
    with pytest.raises(InputError, match=r"not made by this model .*its plans\.json differs"):
        check_output_folder(str(images), str(stock), b, model_identity(b, None, "checkpoint_final.pth"))


def test_outputs_are_created_with_the_umask_not_private(tmp_path):
    from nnunet_ext.data.metadata import save_json_atomic

    old = os.umask(0o022)
    try:
        merge_classifications(str(tmp_path), {"a": np.array([1.0, 0, 0])}, CLASSES)
        save_json_atomic({"x": 1}, str(tmp_path / "dataset.json"))
        for name in ("classification.json", "classification.csv", "dataset.json"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
        os.chmod(tmp_path / "dataset.json", 0o640)  # an existing file keeps its mode, as with a plain open
        save_json_atomic({"x": 2}, str(tmp_path / "dataset.json"))
        assert stat.S_IMODE(os.stat(tmp_path / "dataset.json").st_mode) == 0o640
    finally:
        os.umask(old)
