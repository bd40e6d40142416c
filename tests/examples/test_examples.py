"""Every example's ``--smoke`` mode runs end to end (in-process, each in its own nnU-Net workspace)."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NNUNET_TEST_ENV = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def isolated_env(monkeypatch):
    """Examples point nnUNet_* at their own workspace: restore the test run's variables afterwards."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", *NNUNET_TEST_ENV):
        monkeypatch.setenv(k, os.environ.get(k, ""))
        if not os.environ[k]:
            monkeypatch.delenv(k)
    for k, v in NNUNET_TEST_ENV.items():
        monkeypatch.setenv(k, v)


def test_stdnet_multiphase_ct_smoke(tmp_path, isolated_env):
    out = _load("stdnet_multiphase_ct").main(["--smoke", "-o", str(tmp_path), "-device", "cpu"])
    conv = out["conversion"]
    assert len(conv.cases) == 6 and (conv.folder / "registration_report.csv").is_file()
    with open(conv.folder / "registration_report.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["phase"] for r in rows} == {"arterial", "delayed"}  # every non-reference phase was registered
    assert os.path.isfile(os.path.join(out["predictions"], "classification.csv"))
    assert os.path.isfile(os.path.join(out["benchmark"].output_folder, "report.md"))


def test_single_phase_stdnet_smoke(tmp_path, isolated_env):
    out = _load("single_phase_stdnet").main(["--smoke", "-o", str(tmp_path), "-device", "cpu"])
    res = out["benchmark"]
    assert [m.trainer for m in res.methods] == ["nnUNetTrainer_smoke", "STDNetTrainer_smoke"]
    assert not res.heads["STDNetTrainer_smoke:STDNetPlansCPU:3d_fullres"]  # LiTS has no classes: no head at N=1
    assert os.path.isfile(os.path.join(res.output_folder, "dice_violin.png"))


def test_synthetic_comparison_controls_add_the_pooling_and_optimizer_controls():
    mod = _load("synthetic_comparison")
    plain = mod.methods("gpu2500", "STDNetPlans")
    with_controls = mod.methods("gpu2500", "STDNetPlans", controls=True)
    assert with_controls[:-2] == plain
    assert with_controls[-2:] == [("STDNetTrainer_predictionPool_gpu2500", "STDNetPlans"),
                                  ("STDNetTrainer_nnUNetSGD_gpu2500", "STDNetPlans")]


def test_synthetic_comparison_methods_selects_a_subset_in_report_order():
    mod = _load("synthetic_comparison")
    picked = mod.methods("gpu2500", "STDNetPlans", only=["STDNetTrainer_predictionPool", "nnUNetTrainer",
                                                          "STDNetTrainer"])
    assert picked == [("nnUNetTrainer_gpu2500", "nnUNetPlans"), ("STDNetTrainer_gpu2500", "STDNetPlans"),
                      ("STDNetTrainer_predictionPool_gpu2500", "STDNetPlans")]
    with pytest.raises(SystemExit, match="STDNetTrainer_typo"):
        mod.methods("gpu2500", "STDNetPlans", only=["STDNetTrainer_typo"])


def test_synthetic_comparison_every_method_is_an_exported_trainer():
    import nnunet_ext.trainers as trainers

    mod = _load("synthetic_comparison")
    diagnostics = _diagnostic_trainers()
    for schedule in ("gpu2500", "smoke"):
        picked = mod.methods(schedule, "STDNetPlans", only=list(mod.ALL_METHODS))
        assert len(picked) == len(mod.ALL_METHODS)
        assert [t for t, _ in picked if t not in trainers.__all__ and t not in diagnostics] == []


def _diagnostic_trainers() -> set[str]:
    """Class names of benchmarks/trainers/head_diagnostics.py (the controls and diagnostics outside the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "trainers" / "head_diagnostics.py"
    spec = importlib.util.spec_from_file_location("head_diagnostics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k for k, v in vars(module).items() if isinstance(v, type) and k.startswith(("STDNet", "EarlyFusion"))}


def test_synthetic_comparison_smoke(tmp_path, isolated_env):
    """Also the parallel path (``--jobs``): each training is its own ``nnunet-ext train`` process."""
    methods = ["nnUNetTrainer", "STDNetTrainer", "STDNetTrainer_noTemporal"]  # the full method list: unit test above
    out = _load("synthetic_comparison").main(["--smoke", "-o", str(tmp_path), "-device", "cpu", "--jobs", "2",
                                              "--methods", *methods])
    res = out["benchmark"]
    assert [m.trainer for m in res.methods] == [f"{m}_smoke" for m in methods] and res.ablation is not None
    assert os.path.isfile(os.path.join(res.output_folder, "ablation.png"))
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*_fold0.log"))
    assert logs == sorted(f"{m}_smoke_fold0.log" for m in methods)  # one log per training process
    for m in res.methods:  # every process finished its fold
        assert (tmp_path / "nnUNet_results" / out["dataset"] / f"{m.trainer}__{m.plans}__3d_fullres" / "fold_0" /
                "checkpoint_final.pth").is_file()


def test_real_ct_liver_smoke(tmp_path, isolated_env):
    out = _load("real_ct_liver").main(["--smoke", "-o", str(tmp_path), "-device", "cpu"])
    assert set(out["liver_dice"]) == {"nnUNetTrainer_smoke", "STDNetTrainer_smoke"}
    assert all(0.0 <= d <= 1.0 for d in out["liver_dice"].values())


def test_texlivernet_ircadb_smoke(tmp_path, isolated_env):
    out = _load("texlivernet_ircadb").main(["--smoke", "-o", str(tmp_path), "-device", "cpu"])
    res = out["benchmark"]
    assert [m.trainer for m in res.methods] == ["nnUNetTrainer_smoke", "TexLiverNetTrainer_smoke",
                                                "TexLiverNetTrainer_noText_smoke"]
    assert {r["method"] for r in res.volume_metrics} == {m.name for m in res.methods}  # Dice Global, VOE, RAVD
    predicted = sorted(f for f in os.listdir(out["predictions"]) if f.endswith(".nii.gz"))
    assert predicted and all(f.startswith("ref_") for f in predicted)  # the validation slices, with their texts
    assert os.path.isfile(os.path.join(res.output_folder, "report.md"))


def test_desamba_mri_smoke(tmp_path, isolated_env):
    """The user's path: a folder + CSV (written by the script) converted, planned, DeSamba and the early-fusion
    baseline with clinical features trained, predicted with --tabular, Grad-CAM maps, benchmark report."""
    out = _load("desamba_mri").main(["--smoke", "-o", str(tmp_path), "-device", "cpu"])
    conv = out["conversion"]
    assert len(conv.cases) == 6 and (tmp_path / "user_folder" / "cases.csv").is_file()
    res = out["benchmark"]
    assert [m.trainer for m in res.methods] == ["EarlyFusionTrainer_tabular_smoke", "DeSambaTrainer_smoke"]
    with open(os.path.join(out["predictions"], "classification.csv"), encoding="utf-8") as f:
        predicted = [r["case_id"] for r in csv.DictReader(f)]
    assert predicted and all(c.startswith("patient") for c in predicted)  # the first fold's validation cases
    assert os.path.isfile(os.path.join(res.output_folder, "report.md"))
    if out["gradcam"] is not None:  # the gradcam extra is installed (make test installs it)
        for case in predicted:
            assert os.path.isfile(os.path.join(out["gradcam"], f"{case}_gradcam.png"))
            assert all(os.path.isfile(os.path.join(out["gradcam"], f"{case}_gradcam_{s}.nii.gz"))
                       for s in ("T1", "T2", "T2FS"))
