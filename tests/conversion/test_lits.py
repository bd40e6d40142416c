"""LiTS converter on a look-alike of the LiTS layout: output format, nnU-Net's integrity check, idempotency, overwrite
protection, geometry mismatch, corrupt file, duplicates, skipped cases, and the shared staging machinery."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from lookalikes import make_lits, tiny_liver, write

from nnunet_ext.cli import main
from nnunet_ext.conversion.common import REPORT_FILE, ConversionError
from nnunet_ext.conversion.lits import convert_lits


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_lits_layout_passes_nnunet_integrity_check(tmp_path, nnunet_dirs, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    src = make_lits(tmp_path, n_train=2, n_test=1)
    res = convert_lits(src, 920)
    assert res.folder == nnunet_dirs["nnUNet_raw"] / "Dataset920_LiTS"
    assert res.cases == ["lits_000", "lits_001"] and res.test_cases == ["lits_test_000"] and not res.skipped
    dj = json.loads((res.folder / "dataset.json").read_text(encoding="utf-8"))
    assert dj["channel_names"] == {"0": "CT"} and dj["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert dj["numTraining"] == 2 and dj["file_ending"] == ".nii.gz"
    seg = sitk.ReadImage(str(res.folder / "labelsTr" / "lits_001.nii.gz"))
    _, expected = tiny_liver(seed=1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), expected)
    assert (res.folder / "imagesTs" / "lits_test_000_0000.nii.gz").is_file()
    verify_dataset_integrity(str(res.folder), num_processes=1)
    # no staging folder left behind
    assert not [p for p in res.folder.parent.iterdir() if p.name.startswith(".nnunet_ext_partial")]


def test_rerun_is_idempotent_and_overwrite_is_protected(tmp_path, capsys):
    src = make_lits(tmp_path, n_train=2, n_test=0)
    out = tmp_path / "raw"
    first = convert_lits(src, 921, output=out)
    before = _tree(first.folder)
    mtimes = {p: p.stat().st_mtime_ns for p in first.folder.rglob("*")}
    capsys.readouterr()
    again = convert_lits(src, 921, output=out)
    assert again.already_converted and again.cases == first.cases
    assert "already converted" in capsys.readouterr().out
    assert _tree(first.folder) == before and {p: p.stat().st_mtime_ns for p in first.folder.rglob("*")} == mtimes
    # a moved copy of the same inputs is still the same dataset
    moved = shutil.copytree(src, tmp_path / "elsewhere")
    assert convert_lits(moved, 921, output=out).already_converted

    # different inputs under the same id: refused, nothing changed
    ct, seg = tiny_liver(seed=7)
    write(ct, src / "Training Batch 1" / "volume-2.nii")
    write(seg, src / "Training Batch 1" / "segmentation-2.nii")
    with pytest.raises(ConversionError, match="already exists and holds a different dataset.*--overwrite"):
        convert_lits(src, 921, output=out)
    assert _tree(first.folder) == before
    # another name under the same id is refused as well
    with pytest.raises(ConversionError, match="dataset id 921 is already used"):
        convert_lits(src, 921, output=out, name="LiTSv2")
    replaced = convert_lits(src, 921, output=out, overwrite=True)
    assert replaced.cases == ["lits_000", "lits_001", "lits_002"] and not replaced.already_converted
    # a file modified by hand makes the dataset "different"
    (replaced.folder / "imagesTr" / "lits_000_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(ConversionError, match="modified after the conversion"):
        convert_lits(src, 921, output=out)


def test_geometry_mismatch_names_case_and_leaves_nothing(tmp_path):
    src = make_lits(tmp_path, n_train=2, n_test=0)
    ct, seg = tiny_liver(seed=1)
    write(seg, src / "Training Batch 1" / "segmentation-1.nii", spacing=(1.5, 1.5, 2.5))
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'lits_001'.*segmentation-1.nii does not match.*spacing.*"
                                              r"--copy-image-geometry"):
        convert_lits(src, 922, output=out)
    assert not out.exists() or not any(out.iterdir())
    res = convert_lits(src, 922, output=out, copy_image_geometry=True)
    assert res.cases == ["lits_000", "lits_001"] and any("lits_001" in w for w in res.warnings)
    # a real grid mismatch cannot be fixed by copying the header
    write(seg[:-1], src / "Training Batch 1" / "segmentation-1.nii")
    with pytest.raises(ConversionError, match=r"lits_001.*size.*voxel grids differ"):
        convert_lits(src, 923, output=out, copy_image_geometry=True)
    assert not (out / "Dataset923_LiTS").exists()


def test_corrupt_file_error_and_skip_invalid(tmp_path, capsys):
    src = make_lits(tmp_path, n_train=3, n_test=0)
    (src / "Training Batch 1" / "volume-1.nii").write_bytes(b"\x00" * 100)
    out = tmp_path / "raw"
    with pytest.raises(ConversionError, match=r"case 'lits_001': cannot read volume .*volume-1.nii.*corrupt"):
        convert_lits(src, 924, output=out)
    assert not (out / "Dataset924_LiTS").exists()
    assert [p.name for p in out.iterdir()] == []  # the staging folder is gone too
    res = convert_lits(src, 924, output=out, skip_invalid=True)
    assert res.cases == ["lits_000", "lits_002"] and [s.case for s in res.skipped] == ["lits_001"]
    assert "skipped case 'lits_001'" in capsys.readouterr().out
    assert not list((res.folder / "imagesTr").glob("lits_001*"))
    report = json.loads((res.folder / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["skipped"][0]["case"] == "lits_001"


def test_unpaired_files_raise_or_with_skip_invalid_are_skipped_and_reported(tmp_path):
    src = make_lits(tmp_path, n_train=3, n_test=0)
    os.remove(src / "Training Batch 1" / "segmentation-2.nii")
    write(tiny_liver(seed=9)[1], src / "Training Batch 1" / "segmentation-9.nii")
    with pytest.raises(ConversionError, match=r"segmentation-9.nii.*no matching volume.*--skip-invalid"):
        convert_lits(src, 925, output=tmp_path / "raw")
    os.rename(src / "Training Batch 1" / "segmentation-9.nii", tmp_path / "segmentation-9.nii")
    with pytest.raises(ConversionError, match=r"'lits_002'.*no segmentation-2.nii.*Fix: put segmentation-2.nii"):
        convert_lits(src, 925, output=tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset925_LiTS").exists()  # nothing half-written
    os.rename(tmp_path / "segmentation-9.nii", src / "Training Batch 1" / "segmentation-9.nii")
    res = convert_lits(src, 925, output=tmp_path / "raw", skip_invalid=True)
    assert res.cases == ["lits_000", "lits_001"]
    reasons = {s.case: s.reason for s in res.skipped}
    assert "no segmentation-2.nii" in reasons["lits_002"] and "no matching volume" in reasons["segmentation-9.nii"]
    # unexpected label values (the unpaired files removed first: they would fail before)
    os.remove(src / "Training Batch 1" / "segmentation-9.nii")
    os.remove(src / "Training Batch 1" / "volume-2.nii")
    write(np.full((8, 24, 24), 3, np.uint8), src / "Training Batch 1" / "segmentation-0.nii")
    with pytest.raises(ConversionError, match=r"lits_000.*label values \[3\]"):
        convert_lits(src, 926, output=tmp_path / "raw")


def test_duplicate_case_numbers(tmp_path):
    src = make_lits(tmp_path, n_train=2, n_test=0)
    shutil.copy(src / "Training Batch 1" / "volume-1.nii", src / "volume-1.nii.gz")
    with pytest.raises(ConversionError, match=r"duplicate case id.*'lits_001'"):
        convert_lits(src, 927, output=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_cli(tmp_path, capsys):
    src = make_lits(tmp_path, n_train=1, n_test=0)
    out = tmp_path / "raw"
    assert main(["convert", "lits", "-i", str(src), "-d", "928", "-o", str(out)]) == 0
    assert "Dataset928_LiTS: converted (1 training case(s)" in capsys.readouterr().out
    assert main(["convert", "lits", "-i", str(src), "-d", "928", "-o", str(out), "--name", "Other"]) == 2
    err = capsys.readouterr().err
    assert "already used" in err and "Traceback" not in err
