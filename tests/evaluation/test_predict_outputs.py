"""``nnunet-ext predict`` into a folder that already holds results, with the real tiny trained models: the same model
adds rows, another model (here one without a head, which would replace a segmentation and leave the earlier model's
row) is refused before anything is written, and ``-o`` equal to ``-i`` is refused."""

from __future__ import annotations

import csv
import shutil

import pytest

from nnunet_ext.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _images(smoke, folder, cases):
    folder.mkdir()
    for case in cases:
        for c in range(3):
            shutil.copy(smoke["dataset"]["raw"] / "imagesTr" / f"{case}_{c:04d}.nii.gz", folder)
    return folder


def _predict(smoke, trainer, images, out):
    return main(["predict", "-i", str(images), "-o", str(out), "-d", str(smoke["dataset"]["id"]), "-tr", trainer,
                 "-f", str(smoke["fold"]), "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])


def _ids(out):
    with open(out / "classification.csv", encoding="utf-8") as f:
        return [r["case_id"] for r in csv.DictReader(f)]


def test_one_model_per_output_folder(smoke_models, tmp_path, capsys):
    first, second = _images(smoke_models, tmp_path / "a", ["case_001"]), _images(smoke_models, tmp_path / "b",
                                                                                 ["case_002"])
    out = tmp_path / "pred"
    assert _predict(smoke_models, "EarlyFusionTrainer_smoke", first, out) == 0, capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _predict(smoke_models, "nnUNetTrainer_smoke", first, out) == 2
    err = capsys.readouterr().err
    assert "holds predictions of another model: " in err and "EarlyFusionTrainer_smoke__nnUNetPlans__3d_fullres" in err
    assert "this run uses " in err and "nnUNetTrainer_smoke__nnUNetPlans__3d_fullres" in err and "Fix: " in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    assert _predict(smoke_models, "EarlyFusionTrainer_smoke", second, out) == 0, capsys.readouterr().err
    assert _ids(out) == ["case_001", "case_002"]
    assert _predict(smoke_models, "EarlyFusionTrainer_smoke", first, first) == 2
    assert "the output folder (-o) is the input folder (-i)" in capsys.readouterr().err
    assert sorted(p.name for p in first.iterdir()) == [f"case_001_{c:04d}.nii.gz" for c in range(3)]
