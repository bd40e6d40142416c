"""STD-Net's encoder pre-training, the nnU-Net way: the reference phase as a one-phase dataset, plans with the STD-Net
topology (``pretrain-plans``), vanilla nnU-Net training, ``expand-pretrained``, then stock ``nnUNetv2_train
-pretrained_weights`` into STD-Net; and the errors for checkpoints that do not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TARGET, PRETRAIN = 992, 993
PLANS = "STDNetPlansCPU"


@pytest.fixture(scope="module")
def workflow(nnunet_dirs):
    from nnunet_ext.conversion.reference_phase import convert_reference_phase
    from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
    from nnunet_ext.planners.api import plan_and_preprocess
    from nnunet_ext.planners.pretraining import write_pretraining_plans

    raw = make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), TARGET, n_cases=6, name="PretrainTarget")
    plan_and_preprocess(TARGET, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    plan_and_preprocess(TARGET, "STDNetPlannerCPU", ("3d_fullres",), num_processes=1)
    one_phase = convert_reference_phase(raw, PRETRAIN, output_root=str(nnunet_dirs["nnUNet_raw"]))
    plan_and_preprocess(PRETRAIN, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    plans_file = write_pretraining_plans(TARGET, PLANS, PRETRAIN)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "nnUNetv2_train"), str(PRETRAIN), "3d_fullres", "all", "-tr",
                    "nnUNetTrainer_smoke", "-p", "STDNetPretrainPlans", "-device", "cpu"], check=True,
                   env=dict(os.environ), capture_output=True, timeout=600)
    model = "nnUNetTrainer_smoke__STDNetPretrainPlans__3d_fullres"
    ckpt = nnunet_dirs["nnUNet_results"] / Path(one_phase).name / model / "fold_all" / "checkpoint_final.pth"
    return {"raw": Path(raw), "one_phase": Path(one_phase), "plans_file": Path(plans_file), "ckpt": ckpt,
            "results": nnunet_dirs["nnUNet_results"] / Path(raw).name}


def test_reference_phase_dataset_holds_the_reference_channel_and_the_labels(workflow):
    import SimpleITK as sitk

    dj = json.loads((workflow["one_phase"] / "dataset.json").read_text(encoding="utf-8"))
    src = json.loads((workflow["raw"] / "dataset.json").read_text(encoding="utf-8"))
    assert list(dj["channel_names"]) == ["0"] and dj["labels"] == src["labels"] and dj["numTraining"] == 6
    from nnunet_ext.planners.case_settings import make_case_settings

    ref = make_case_settings(src)["reference_phase_index"]
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(workflow["one_phase"] / "imagesTr" / "case_000_0000.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(workflow["raw"] / "imagesTr" / f"case_000_{ref:04d}.nii.gz")))
    assert (a == b).all()


def test_pretraining_plans_give_the_stdnet_topology_as_a_unet(workflow, nnunet_dirs):
    plans = json.loads(workflow["plans_file"].read_text(encoding="utf-8"))
    target = json.loads((nnunet_dirs["nnUNet_preprocessed"] / workflow["raw"].name / f"{PLANS}.json")
                        .read_text(encoding="utf-8"))
    cfg, tcfg = plans["configurations"]["3d_fullres"], target["configurations"]["3d_fullres"]
    assert cfg["architecture"]["network_class_name"].endswith("PlainConvUNet")
    for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        assert cfg["architecture"]["arch_kwargs"][k] == tcfg["architecture"]["arch_kwargs"][k]
    assert "temporal_dim" not in cfg["architecture"]["arch_kwargs"]
    assert cfg["patch_size"] == tcfg["patch_size"] and cfg["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert workflow["ckpt"].is_file()


def test_multichannel_pretraining_dataset_is_refused(workflow):
    from nnunet_ext.planners.pretraining import PretrainingPlansError, write_pretraining_plans

    with pytest.raises(PretrainingPlansError, match="3 input channels.*reference-phase"):
        write_pretraining_plans(TARGET, PLANS, TARGET, plans_name="ShouldNotExist")


def test_expanded_checkpoint_loads_with_nnunets_own_loader(workflow, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.data.checkpoints import load_checkpoint
    from nnunet_ext.trainers.pretraining import expand_pretrained

    out = tmp_path / "stdnet_init.pth"
    report = expand_pretrained(str(workflow["ckpt"]), TARGET, PLANS, output=str(out))
    assert report.copied_encoder > 0 and report.copied_decoder > 0
    assert set(report.initialised) >= {"temporal", "cls_head"}
    assert json.loads(Path(str(out) + ".json").read_text(encoding="utf-8"))["copied_encoder"] == report.copied_encoder
    source = load_checkpoint(workflow["ckpt"])["network_weights"]

    tr = get_trainer_from_args(str(TARGET), "3d_fullres", 0, "STDNetTrainer_paperProtocol_smoke", PLANS,
                               device=torch.device("cpu"))
    tr.initialize()
    load_pretrained_weights(tr.network, str(out))  # nnU-Net's function, unchanged: asserts every key fits
    state = tr.network.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(state[k], source[k]) for k in encoder)
    expanded = load_checkpoint(out)["network_weights"]
    assert all(torch.equal(state[k], expanded[k]) for k in state if k.startswith(("temporal.", "cls_head.")))


def test_stock_nnunetv2_train_takes_the_expanded_checkpoint(workflow, tmp_path):
    from nnunet_ext.cli import main

    out = tmp_path / "init.pth"
    assert main(["expand-pretrained", "-i", str(workflow["ckpt"]), "-d", str(TARGET), "-p", PLANS, "-o",
                 str(out)]) == 0
    bin_dir = Path(sys.executable).parent
    r = subprocess.run([str(bin_dir / "nnUNetv2_train"), str(TARGET), "3d_fullres", "0", "-tr",
                        "STDNetTrainer_paperProtocol_smoke", "-p", PLANS, "-device", "cpu", "-pretrained_weights",
                        str(out)], env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Loading pretrained weights" in r.stdout
    assert (workflow["results"] / f"STDNetTrainer_paperProtocol_smoke__{PLANS}__3d_fullres" / "fold_0"
            / "checkpoint_final.pth").is_file()


def _encoder_state(workflow) -> dict:
    from nnunet_ext.data.checkpoints import load_checkpoint

    return dict(load_checkpoint(workflow["ckpt"])["network_weights"])


def test_mismatches_name_what_differs(workflow):
    from nnunet_ext.trainers.pretraining import PretrainedMismatchError, build_target_network, expand_weights

    net = build_target_network(TARGET, PLANS, "3d_fullres", "STDNetTrainer")
    good = _encoder_state(workflow)
    first = next(k for k in good if k.startswith("encoder.") and k.endswith("conv.weight"))

    two_channels = dict(good)
    w = good[first]
    two_channels[first] = torch.cat([w, w], dim=1)
    with pytest.raises(PretrainedMismatchError, match=r"input channels per phase: STD-Net's encoder takes 1 .* 2"):
        expand_weights(net, two_channels)

    n_stages = len({k.split(".")[2] for k in good if k.startswith("encoder.stages.")})
    fewer = {k: v for k, v in good.items() if f"stages.{n_stages - 1}." not in k}
    with pytest.raises(PretrainedMismatchError, match=f"stages: STD-Net's encoder has {n_stages}, the checkpoint's "
                                                      f"{n_stages - 1}"):
        expand_weights(net, fewer)

    wider = dict(good)
    wider[first] = torch.zeros(w.shape[0] + 4, *w.shape[1:])
    with pytest.raises(PretrainedMismatchError, match="widths per stage"):
        expand_weights(net, wider)

    with pytest.raises(PretrainedMismatchError, match="no encoder"):
        expand_weights(net, {"fc.weight": torch.zeros(2, 2)})


def test_weight_sharing_ablation_gets_the_encoder_in_every_phase(workflow):
    from nnunet_ext.trainers.pretraining import build_target_network, expand_weights

    net = build_target_network(TARGET, PLANS, "3d_fullres", "STDNetTrainer_noWeightSharing")
    good = _encoder_state(workflow)
    state, report = expand_weights(net, good)
    first = next(k for k in good if k.startswith("encoder.") and k.endswith("conv.weight"))
    per_phase = [k for k in state if k.endswith(first[len("encoder."):]) and k.startswith("encoder.")]
    assert len(per_phase) == 3 and all(torch.equal(state[k], good[first]) for k in per_phase)
