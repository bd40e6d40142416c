"""``nnunet-ext benchmark`` and ``nnunet-ext robustness`` end to end on real tiny trained models."""

from __future__ import annotations

import csv
import json

import pytest

from nnunet_ext.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_benchmark_cli(smoke_models, tmp_path, capsys):
    ds = smoke_models["dataset"]
    out = tmp_path / "bench"
    rc = main(["benchmark", "-d", str(ds["id"]), "-m", "EarlyFusionTrainer_smoke", "-ref", "nnUNetTrainer_smoke",
               "-f", str(smoke_models["fold"]), "-o", str(out), "--small-lesion-mm3", "200", "-np", "1",
               "-device", "cpu", "--full-model", "EarlyFusionTrainer_smoke", "--n-bootstrap", "200"])
    assert rc == 0, capsys.readouterr().err
    report = (out / "report.md").read_text(encoding="utf-8")
    for text in ("# Benchmark on " + ds["name"], "Reference: **nnUNetTrainer_smoke**", "### Dice", "### HD95 (mm)",
                 "## Classification", "## Efficiency", "## Ablation", "nnunetv2 2.8.1", "**Command**: `nnunet-ext "
                 "benchmark -d 900", "Folds used: 4"):
        assert text in report, text
    seg = _rows(out / "per_case_segmentation.csv")
    methods = {r["method"] for r in seg}
    assert methods == {"EarlyFusionTrainer_smoke", "nnUNetTrainer_smoke"}
    assert {r["structure"] for r in seg} == {"liver", "lesion"}
    split = json.load(open(ds["preprocessed"] / "splits_final.json", encoding="utf-8"))[smoke_models["fold"]]["val"]
    assert {r["case"] for r in seg} == set(split)
    summary = _rows(out / "segmentation_summary.csv")
    assert any(r["method"] == "EarlyFusionTrainer_smoke" and r["p_wilcoxon"] != "" for r in summary)
    eff = {r["method"]: r for r in _rows(out / "efficiency.csv")}
    assert int(eff["EarlyFusionTrainer_smoke"]["parameters"]) > int(eff["nnUNetTrainer_smoke"]["parameters"])
    assert float(eff["nnUNetTrainer_smoke"]["flops_forward"]) > 0
    assert float(eff["nnUNetTrainer_smoke"]["inference_s_per_case"]) > 0
    cls = _rows(out / "per_case_classification.csv")
    assert {r["method"] for r in cls} == {"EarlyFusionTrainer_smoke"}
    for png in ("dice_violin.png", "hd95_violin.png", "dice_by_lesion_size.png", "hd95_by_lesion_size.png",
                "roc_curves.png", "confusion_matrices.png", "ablation.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png


def test_robustness_cli(smoke_models, tmp_path, capsys):
    ds = smoke_models["dataset"]
    out = tmp_path / "rob"
    cases = ["case_000", "case_001", "case_002"]  # one per class
    rc = main(["robustness", "-d", str(ds["id"]), "-tr", "EarlyFusionTrainer_smoke", "-f", str(smoke_models["fold"]),
               "-i", str(ds["raw"]), "--cases", *cases, "--repeats", "1", "--seed", "3", "-o", str(out),
               "-device", "cpu", "--n-bootstrap", "200"])
    assert rc == 0, capsys.readouterr().err
    report = (out / "robustness.md").read_text(encoding="utf-8")
    assert "±5 mm" in report and "±7°" in report and "## Classification" in report
    per_case = _rows(out / "robustness_per_case.csv")
    assert len(per_case) == len(cases) * 2 * 2  # (unperturbed + 1 repeat) x (liver, lesion)
    pert = _rows(out / "perturbations.csv")
    assert len(pert) == len(cases) * 3  # one transform per phase
    shifts = [(r["shift_x_mm"], r["shift_y_mm"]) for r in pert if r["case"] == "case_000"]
    assert len(set(shifts)) == 3, "each phase gets its own transform"
    assert all(abs(float(r[k])) <= 5 for r in pert for k in r if k.startswith("shift_"))
    assert all(abs(float(r[k])) <= 7 for r in pert for k in r if k.startswith("rot_"))
    summary = json.load(open(out / "robustness_summary.json", encoding="utf-8"))
    assert {r["structure"] for r in summary["segmentation"]} == {"liver", "lesion"}
    assert summary["classification"]["accuracy"]["delta"]["n_boot"] > 0
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
