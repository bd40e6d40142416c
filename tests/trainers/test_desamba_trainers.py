"""DeSamba through nnU-Net: the planner on a tiny synthetic multi-sequence MRI dataset (preset against the VRAM target,
patches that cover the lesion ROI), stock ``nnUNetv2_train -tr DeSambaTrainer_smoke`` and ``nnunet-ext predict
--tabular`` writing ``classification.csv``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
DATASET = 860
TRAINER = "DeSambaTrainer_smoke"
PLANS = "DeSambaPlans"
# 1 GB: the base (7 GB of parameter state) and small (1.5 GB) presets do not fit, tiny does (CPU-sized)
CPU_TARGET_GB = 1.0


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=dict(os.environ), capture_output=True, encoding="utf-8", errors="replace",
                         timeout=600)
    assert res.returncode == expect, f"{' '.join(cmd)} -> {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def mri(nnunet_dirs):
    """10 synthetic MRI cases (3 sequences, 16x32x32, three classes, three clinical features; their texts removed),
    planned with DeSambaPlanner at a CPU-sized VRAM target and preprocessed (3d_fullres)."""
    from nnunet_ext.conversion.synthetic_mri import convert_synthetic_mri
    from nnunet_ext.planners.api import plan_and_preprocess

    raw = Path(convert_synthetic_mri(DATASET, n_cases=10, shape=(16, 32, 32), progress=False))
    dataset_json = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    for case in dataset_json["nnunet_ext"]["cases"].values():  # DeSamba reads no text: skip embedding them
        case.pop("text", None)
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")
    name = plan_and_preprocess(DATASET, "DeSambaPlanner", ("3d_fullres",), num_processes=1,
                               gpu_memory_target_in_gb=CPU_TARGET_GB)
    pre = nnunet_dirs["nnUNet_preprocessed"] / raw.name
    return {"raw": raw, "pre": pre, "plans": json.loads((pre / f"{name}.json").read_text(encoding="utf-8")),
            "results": nnunet_dirs["nnUNet_results"] / raw.name, "plans_name": name}


def test_planner_picks_a_preset_against_the_vram_target_and_covers_the_lesion(mri):
    from nnunet_ext.architectures.desamba import DESAMBA_CLASS_NAME
    from nnunet_ext.planners.desamba import PLANNING_KEY, DeSambaPlanner, DeSambaPlannerCPU

    assert mri["plans_name"] == PLANS
    cfg = mri["plans"]["configurations"]["3d_fullres"]
    record = cfg[PLANNING_KEY]
    assert record["preset"] == "tiny" and record["covers_lesion_roi"]
    assert all(0 < r <= p for r, p in zip(record["lesion_roi_voxels"], cfg["patch_size"]))
    assert cfg["architecture"]["network_class_name"] == DESAMBA_CLASS_NAME
    assert cfg["architecture"]["arch_kwargs"]["preset"] == "tiny"
    assert cfg["data_identifier"] == "nnUNetPlans_3d_fullres"  # vanilla nnU-Net's preprocessing, shared
    picked = {}
    for target, planner in ((80, DeSambaPlanner), (8, DeSambaPlanner), (80, DeSambaPlannerCPU)):
        plans = planner(DATASET, gpu_memory_target_in_gb=target,
                        plans_name=f"DeSambaPlansTest{target}").plan_experiment()
        picked[(target, planner.__name__)] = plans["configurations"]["3d_fullres"][PLANNING_KEY]["preset"]
    assert picked == {(80, "DeSambaPlanner"): "base", (8, "DeSambaPlanner"): "small",
                      (80, "DeSambaPlannerCPU"): "tiny"}


def test_stock_train_and_predict_with_tabular_features(mri, tmp_path):
    """``nnUNetv2_train ... -tr DeSambaTrainer_smoke`` (nnU-Net's own entry point, finding the trainer through
    nnUNet_extTrainer) and ``nnunet-ext predict --tabular`` in subprocesses."""
    assert os.environ.get("nnUNet_extTrainer"), "the nnunet_dirs fixture exports nnUNet_extTrainer"
    run([str(BIN / "nnUNetv2_train"), str(DATASET), "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"])
    fold = mri["results"] / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "tabular_statistics.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "primary task: classification" in log and "case inputs of the network: ['tabular']" in log
    for term in ("seg", "cls", "recon_self", "recon_cross"):
        assert f"{term} " in log.split("loss terms (train/val, unweighted):")[1].splitlines()[0], term
    summary = json.loads((fold / "validation" / "summary_classification.json").read_text(encoding="utf-8"))
    for key in ("accuracy", "top_k_accuracy", "auc_per_class", "auc_ovr_macro", "sensitivity_per_class",
                "specificity_per_class", "f1_per_class", "f1_macro"):
        assert key in summary, key

    metadata = json.loads((mri["raw"] / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    cases = ["mri_001"]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for case in cases:
        for f in sorted((mri["raw"] / "imagesTr").glob(f"{case}_*.nii.gz")):
            os.symlink(f, inp / f.name)
    tabular = tmp_path / "tabular.csv"
    names = metadata["tabular"]["feature_names"]
    tabular.write_text("case_id," + ",".join(names) + "\n" + "".join(
        f"{c}," + ",".join(str(v) for v in metadata["cases"][c]["tabular"]) + "\n" for c in cases), encoding="utf-8")
    run([str(BIN / "nnunet-ext"), "predict", "-i", str(inp), "-o", str(out), "-d", str(DATASET), "-c", "3d_fullres",
         "-tr", TRAINER, "-p", PLANS, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
         "--tabular", str(tabular)])
    rows = (out / "classification.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("case_id,predicted_class") and rows[1].startswith("mri_001,")
    assert all((out / f"{c}.nii.gz").is_file() for c in cases)
    _gradcam_and_check(mri["raw"], inp, tabular, tmp_path / "gradcam", metadata["classification"]["class_names"])


def _gradcam_and_check(raw: Path, inp: Path, tabular: Path, out: Path, class_names: list[str]) -> None:
    """``nnunet-ext gradcam --tabular`` (in-process) on the trained model: one map per sequence on the input image's
    grid and geometry, finite and in [0, 1], a PNG, and a row naming the predicted class; then a given class."""
    pytest.importorskip("captum", reason="nnunet-ext gradcam needs the gradcam extra")
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ext.cli import main

    common = ["gradcam", "-i", str(inp), "-o", str(out), "-d", str(DATASET), "-tr", TRAINER, "-p", PLANS, "-f", "0",
              "-device", "cpu", "--tabular", str(tabular)]
    assert main(common) == 0
    stored = json.loads((out / "gradcam.json").read_text(encoding="utf-8"))
    assert stored["sequences"] == ["T1", "T2", "T2FS"] and stored["class_names"] == class_names
    (row,) = stored["cases"]
    assert row["case"] == "mri_001" and row["target_source"] == "predicted"
    assert row["target_class"] == row["predicted_class"] in class_names
    assert abs(sum(row[f"share_{s}"] for s in stored["sequences"]) - 1) < 1e-3 or row["scale"] == 0
    assert (out / "mri_001_gradcam.png").stat().st_size > 0 and (out / "gradcam.csv").is_file()
    for i, seq in enumerate(stored["sequences"]):
        image = sitk.ReadImage(str(raw / "imagesTr" / f"mri_001_{i:04d}.nii.gz"))
        cam = sitk.ReadImage(str(out / f"mri_001_gradcam_{seq}.nii.gz"))
        assert cam.GetSize() == image.GetSize() and cam.GetSpacing() == pytest.approx(image.GetSpacing())
        assert cam.GetOrigin() == pytest.approx(image.GetOrigin())
        assert cam.GetDirection() == pytest.approx(image.GetDirection())
        values = sitk.GetArrayViewFromImage(cam)
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 + 1e-6
    other = next(c for c in class_names if c != row["target_class"])
    assert main([*common, "--target-class", other, "--no_plot"]) == 0
    (again,) = json.loads((out / "gradcam.json").read_text(encoding="utf-8"))["cases"]
    assert again["target_class"] == other and again["target_source"] == "given"
