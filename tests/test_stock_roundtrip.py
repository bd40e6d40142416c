"""One real round trip through the stock nnU-Net console scripts (subprocesses, not imports): plan and preprocess,
train a few iterations with the early-fusion baseline whose head consumes the tabular features, predict with
`nnunet-ext predict --tabular` and with `nnUNetv2_predict`; and a training killed mid-run that resumes with `--c`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset

BIN = Path(sys.executable).parent
DATASET = 902


def run(cmd: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace",
                         timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def stock_env(nnunet_dirs):
    env = dict(os.environ)
    env.pop("nnUNet_extTrainer", None)
    trainer_path = run([str(BIN / "nnunet-ext"), "trainer-path"], env).stdout.strip()
    env["nnUNet_extTrainer"] = trainer_path  # the one documented step
    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), DATASET, n_cases=6, name="StockRoundTrip")
    ts = Path(raw) / "imagesTs"
    ts.mkdir()
    for f in sorted((Path(raw) / "imagesTr").glob("case_00[01]_*")):
        shutil.copy(f, ts / f.name)
    # stock planning runs nnU-Net's VRAM estimate with torch.set_num_threads(nnUNet_n_proc_DA): needs >= 1
    run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET), "-c", "3d_fullres", "-np", "1",
         "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"})
    metadata = json.loads((Path(raw) / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]
    tabular = Path(raw) / "tabular_ts.csv"
    names = metadata["tabular"]["feature_names"]
    tabular.write_text("case_id," + ",".join(reversed(names)) + "\n" + "".join(  # columns by name, any order
        f"{c}," + ",".join(str(v) for v in reversed(metadata["cases"][c]["tabular"])) + "\n"
        for c in ("case_000", "case_001")), encoding="utf-8")
    return {"env": env, "raw": Path(raw), "ts": ts, "results": nnunet_dirs["nnUNet_results"], "tabular": tabular}


def test_stock_train_and_predict(stock_env, tmp_path):
    env = stock_env["env"]
    trainer = "EarlyFusionTrainer_tabular_smoke"
    run([str(BIN / "nnUNetv2_train"), str(DATASET), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    model = next(stock_env["results"].glob(f"Dataset{DATASET}_*")) / f"{trainer}__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "fold_0" / "validation" / "summary_classification.json").is_file()
    stats = json.loads((model / "fold_0" / "tabular_statistics.json").read_text(encoding="utf-8"))
    assert stats["features"] == ["age", "marker"] and stats["n_training_cases"] in (4, 5)

    out = tmp_path / "ext"
    predict = [str(BIN / "nnunet-ext"), "predict", "-i", str(stock_env["ts"]), "-o", str(out), "-d", str(DATASET),
               "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]
    refused = subprocess.run(predict, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert refused.returncode == 2 and "--tabular FILE" in refused.stderr and not out.exists()
    run(predict + ["--tabular", str(stock_env["tabular"])], env)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz"]
    # predicting one more time, one case only, into the same folder keeps the other case's row
    only_one = tmp_path / "only_case_001"
    only_one.mkdir()
    for f in stock_env["ts"].glob("case_001_*"):
        shutil.copy(f, only_one / f.name)
    first = (out / "classification.csv").read_text(encoding="utf-8")
    run([str(BIN / "nnunet-ext"), "predict", "-i", str(only_one), "-o", str(out), "-d", str(DATASET),
         "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--tabular", str(stock_env["tabular"])], env)
    assert (out / "classification.csv").read_text(encoding="utf-8") == first  # same model, same rows
    rows = (out / "classification.csv").read_text(encoding="utf-8").strip().splitlines()
    assert rows[0] == "case_id,predicted_class,prob_washout,prob_progressive,prob_nonenhancing"
    assert [r.split(",")[0] for r in rows[1:]] == ["case_000", "case_001"]
    for r in rows[1:]:
        assert abs(sum(float(v) for v in r.split(",")[2:]) - 1) < 1e-4
    cls = json.loads((out / "classification.json").read_text(encoding="utf-8"))
    assert set(cls["case_000"]["probabilities"]) == {"washout", "progressive", "nonenhancing"}

    # the robustness command passes every perturbed copy its case's features (here from the dataset.json of -i)
    rob = tmp_path / "robustness"
    run([str(BIN / "nnunet-ext"), "robustness", "-m", str(model), "-f", "0", "-i", str(stock_env["raw"]), "--cases",
         "case_000", "case_001", "case_002", "-o", str(rob), "-device", "cpu", "--disable_tta", "--n-bootstrap",
         "50"], env)
    summary = json.loads((rob / "robustness_summary.json").read_text(encoding="utf-8"))
    assert summary["cases"] == summary["classification_cases"] == ["case_000", "case_001", "case_002"]

    stock = tmp_path / "stock"
    run([str(BIN / "nnUNetv2_predict"), "-i", str(stock_env["ts"]), "-o", str(stock), "-d", str(DATASET),
         "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "--disable_tta",
         "-npp", "1", "-nps", "1"], env)
    assert sorted(p.name for p in stock.glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz"]
    import SimpleITK as sitk

    for name in ("case_000", "case_001"):  # nnU-Net's predictor and ours segment the same way (no TTA in either)
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}.nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f"{name}.nii.gz")))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(stock_env["ts"] / f"{name}_0000.nii.gz")))
        assert ours.shape == theirs.shape == image.shape
        assert (ours == theirs).all() and set(ours.ravel().tolist()) <= {0, 1, 2}


def test_killed_training_resumes_with_c(stock_env):
    env = stock_env["env"]
    cmd = [str(BIN / "nnUNetv2_train"), str(DATASET), "3d_fullres", "1", "-tr", "EarlyFusionTrainer_smoke3",
           "-device", "cpu"]
    fold = (stock_env["results"] / f"Dataset{DATASET:03d}_StockRoundTrip"
            / "EarlyFusionTrainer_smoke3__nnUNetPlans__3d_fullres" / "fold_1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (fold / "checkpoint_latest.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pth").exists(), "training finished before it could be killed"
    import torch

    killed = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    epoch_at_kill = killed["current_epoch"]
    assert 1 <= epoch_at_kill < 3
    before = set(fold.glob("training_log_*.txt"))
    run(cmd + ["--c"], env)
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    logs = final["logging"]
    assert len(logs["train_losses"]) == 3 and len(logs["cls_val_auc"]) == 3
    # resumed, not restarted: the epochs before the kill keep their logged values (an unseeded restart redraws them)
    for key in ("train_losses", "loss_cls_train"):
        assert logs[key][:epoch_at_kill] == killed["logging"][key][:epoch_at_kill]
    resumed_log = "".join(f.read_text(encoding="utf-8") for f in set(fold.glob("training_log_*.txt")) - before)
    assert f"Epoch {epoch_at_kill}" in resumed_log and "Epoch 0" not in resumed_log


def test_external_planner_through_our_cli(stock_env):
    env = stock_env["env"]
    run([str(BIN / "nnunet-ext"), "plan-and-preprocess", "-d", str(DATASET), "-pl", "nnUNetPlannerResEncM",
         "-c", "3d_fullres", "-np", "1"], env)
    pre = Path(env["nnUNet_preprocessed"]) / f"Dataset{DATASET:03d}_StockRoundTrip"
    assert (pre / "nnUNetResEncUNetMPlans.json").is_file()
    splits = json.loads((pre / "splits_final.json").read_text(encoding="utf-8"))
    assert len(splits) == 5
