"""TexLiverNet through nnU-Net: its planner on a 2D dataset with texts, stock ``nnUNetv2_train``, ``nnunet-ext predict
--texts`` (and without texts), the ablation and the paper's loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
DATASET = 906
TRAINER = "TexLiverNetTrainer_smoke"


def run(cmd: list[str], env: dict | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env or dict(os.environ), capture_output=True, encoding="utf-8", errors="replace",
                         timeout=600)
    assert res.returncode == expect, f"{' '.join(cmd)} -> {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def referring(nnunet_dirs, tmp_path_factory):
    from nnunet_ext.conversion.synthetic_referring import convert_synthetic_referring
    from nnunet_ext.planners.api import plan_and_preprocess

    raw = Path(convert_synthetic_referring(DATASET, n_cases=10, size=48, progress=False))
    plan_and_preprocess(DATASET, "ExperimentPlanner", ("2d",), num_processes=1)
    plan_and_preprocess(DATASET, "TexLiverNetPlanner", ("2d",), num_processes=1)
    work = tmp_path_factory.mktemp("texlivernet")
    images = work / "images"
    images.mkdir()
    for case in ("ref_0000", "ref_0001"):
        os.symlink(raw / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    texts = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))["nnunet_ext"]["cases"]
    (work / "texts.json").write_text(json.dumps({c: texts[c]["text"] for c in ("ref_0000", "ref_0001")}),
                                     encoding="utf-8")
    return {"raw": raw, "pre": nnunet_dirs["nnUNet_preprocessed"] / raw.name, "work": work, "images": images,
            "results": nnunet_dirs["nnUNet_results"] / raw.name}


def test_the_planner_names_texlivernet_for_2d_and_reuses_the_vanilla_data(referring):
    plans = json.loads((referring["pre"] / "TexLiverNetPlans.json").read_text(encoding="utf-8"))
    cfg = plans["configurations"]["2d"]
    assert cfg["architecture"]["network_class_name"] == "nnunet_ext.architectures.texlivernet.TexLiverNet"
    kwargs = cfg["architecture"]["arch_kwargs"]
    assert kwargs["input_size"] == cfg["patch_size"] and all(s % 16 == 0 for s in cfg["patch_size"])
    assert kwargs["use_text"] is True and kwargs["agents"] == 7
    assert cfg["data_identifier"] == "nnUNetPlans_2d" and cfg["batch_size"] >= 1
    assert not (referring["pre"] / "TexLiverNetPlans_2d").exists()


def test_the_memory_estimate_counts_the_text_modules(referring, monkeypatch):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.planners.texlivernet import TexLiverNetPlanner

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's estimate sets torch's threads to this number
    planner = TexLiverNetPlanner(DATASET)
    cm = PlansManager(str(referring["pre"] / "nnUNetPlans.json")).get_configuration("2d")
    ours = planner.static_estimate_VRAM_usage(cm.patch_size, 1, 3, cm.network_arch_class_name,
                                              cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import)
    vanilla = super(TexLiverNetPlanner, planner).static_estimate_VRAM_usage(
        cm.patch_size, 1, 3, cm.network_arch_class_name, cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import)
    assert ours > vanilla > 0


def test_stock_training_and_prediction_with_texts(referring):
    from nnunet_ext.paths import trainer_discovery_path

    env = {**os.environ, "nnUNet_extTrainer": trainer_discovery_path()}
    run([str(BIN / "nnUNetv2_train"), str(DATASET), "2d", "0", "-tr", TRAINER, "-p", "TexLiverNetPlans",
         "-device", "cpu"], env)
    model = referring["results"] / f"{TRAINER}__TexLiverNetPlans__2d"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model / "fold_0" / "validation" / "summary.json").is_file()
    plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
    assert plans["nnunet_ext"]["text_encoder"]["dim"] == 384
    out = referring["work"] / "pred"
    cmd = [str(BIN / "nnunet-ext"), "predict", "-i", str(referring["images"]), "-o", str(out), "-d", str(DATASET),
           "-c", "2d", "-tr", TRAINER, "-p", "TexLiverNetPlans", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]
    run(cmd + ["--texts", str(referring["work"] / "texts.json")], env)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["ref_0000.nii.gz", "ref_0001.nii.gz"]
    refused = run(cmd, env, expect=2)
    assert "--texts FILE" in refused.stderr and "--allow-missing-text" in refused.stderr
    run(cmd + ["--allow-missing-text"], env)  # the learned "no text" token


def test_the_ablation_consumes_no_text_and_the_paper_loss_weighs_bce_8_to_2(referring):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_ext.paths import ensure_trainer_path
    from nnunet_ext.trainers.losses import DiceBCELoss

    ensure_trainer_path()
    ablation = get_trainer_from_args(str(DATASET), "2d", 1, "TexLiverNetTrainer_noText_smoke", "TexLiverNetPlans",
                                     device=torch.device("cpu"))
    ablation.initialize()
    assert ablation.case_uses == () and ablation.network.use_text is False
    paper = get_trainer_from_args(str(DATASET), "2d", 1, "TexLiverNetTrainer_paperLoss_smoke", "TexLiverNetPlans",
                                  device=torch.device("cpu"))
    paper.initialize()
    assert isinstance(paper.loss, DeepSupervisionWrapper) and isinstance(paper.loss.loss, DiceBCELoss)
    assert paper.loss.loss.dice_weight == pytest.approx(0.2) and paper.case_uses == ("text",)
    ablation.run_training()  # trains without any text input
    assert (Path(ablation.output_folder) / "checkpoint_final.pth").is_file()
