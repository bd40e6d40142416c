"""STD-Net trainers: networks from vanilla and STD-Net plans, the paper loss, and short training + prediction runs.

Runs use Dataset990 (shared with tests/planners/test_stdnet_planner.py): vanilla nnU-Net plans preprocessed once,
then ``STDNetPlanner`` through ``nnunet_ext.planners.api.plan_and_preprocess``, which must reuse that data folder.
Its plans are saved as ``STDNetPlansTiny`` and their temporal modeler shrunk in the JSON (nnU-Net plans are meant to
be edited), so CPU runs stay small; the paper-size defaults are checked on the meta device.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

DATASET = 990
TINY_PLANS = "STDNetPlansTiny"
TINY_TEMPORAL = {"temporal_dim": 32, "temporal_depth": 2, "temporal_heads": 2}


def _data_folders(pre: Path) -> list[str]:
    return sorted(d.name for d in pre.iterdir() if d.is_dir() and d.name not in ("gt_segmentations", "text_embeddings"))


@pytest.fixture(scope="module")
def dataset(nnunet_dirs):
    from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
    from nnunet_ext.planners.api import plan_and_preprocess

    raw = nnunet_dirs["nnUNet_raw"] / f"Dataset{DATASET}_STDNet"
    if not (raw / "dataset.json").is_file():
        make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), DATASET, n_cases=10, name="STDNet")
    pre = nnunet_dirs["nnUNet_preprocessed"] / raw.name
    if not (pre / "nnUNetPlans_3d_fullres").is_dir():
        plan_and_preprocess(DATASET, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    before = _data_folders(pre)
    log = io.StringIO()
    with redirect_stdout(log):
        name = plan_and_preprocess(DATASET, "STDNetPlanner", ("3d_fullres",), num_processes=1, plans_name=TINY_PLANS)
    plans_file = pre / f"{name}.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    for cfg in plans["configurations"].values():
        if "architecture" in cfg:
            cfg["architecture"]["arch_kwargs"].update(TINY_TEMPORAL)
    plans_file.write_text(json.dumps(plans, indent=2), encoding="utf-8")
    return {"raw": raw, "pre": pre, "results": nnunet_dirs["nnUNet_results"] / raw.name, "log": log.getvalue(),
            "data_folders_before": before}


@pytest.fixture
def single_cpu(monkeypatch):
    """``train``/``predict`` set torch's threads to ``os.cpu_count()``; on a busy shared 2-core machine spinning
    OpenMP threads make tiny runs 2x slower than one thread."""
    monkeypatch.setattr(os, "cpu_count", lambda: 1)


def _plans_manager(pre: Path, plans_name: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures.contract import PLANS_KEY
    from nnunet_ext.planners.case_settings import make_case_settings

    pm = PlansManager(str(pre / f"{plans_name}.json"))
    dj = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    pm.plans[PLANS_KEY] = make_case_settings(dj)  # as the trainer does
    return pm


def _predict_and_check(dataset, model_folder: Path, out: Path, fold) -> None:
    from nnunet_ext.inference.predict import predict

    inp = out.parent / f"{out.name}_input"
    inp.mkdir(parents=True)
    for f in sorted((dataset["raw"] / "imagesTr").glob("case_00[01]_*.nii.gz")):
        shutil.copy(f, inp / f.name)
    probs = predict(str(inp), str(out), str(model_folder), folds=(fold,), device="cpu", disable_tta=True,
                    num_processes_preprocessing=1, num_processes_export=1)
    assert set(probs) == {"case_000", "case_001"}
    rows = (out / "classification.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 3  # header + 2 cases
    assert (out / "case_000.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------- building networks
def test_stdnet_planner_reused_the_vanilla_data_folder(dataset):
    assert "reusing preprocessed data" in dataset["log"]
    assert _data_folders(dataset["pre"]) == dataset["data_folders_before"] == ["nnUNetPlans_3d_fullres"]
    plans = json.loads((dataset["pre"] / f"{TINY_PLANS}.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"


def test_vanilla_plans_give_unet_topology_and_paper_temporal_defaults(dataset):
    from nnunet_ext.architectures.stdnet import STDNet
    from nnunet_ext.trainers import STDNetTrainer

    pm = _plans_manager(dataset["pre"], "nnUNetPlans")
    cm = pm.get_configuration("3d_fullres")
    with torch.device("meta"):  # the paper-size transformer has 40M parameters; only the structure is checked
        net = STDNetTrainer.build_network_architecture(pm, cm, 3, 3, True)
    assert isinstance(net, STDNet) and net.encoder_kind == "plain" and net.share_weights
    assert list(net.encoder.output_channels) == list(cm.network_arch_init_kwargs["features_per_stage"])
    t = net.temporal
    assert (t.dim, len(t.blocks), t.heads, net.num_phases, net.reference_phase) == (768, 6, 8, 3, 1)
    assert net.cls_head is not None and net.decoder.deep_supervision


@pytest.mark.parametrize("trainer,expected", [
    ("STDNetTrainer", ("transformer", True)),
    ("STDNetTrainer_noTemporal", ("mean", True)),
    ("STDNetTrainer_noWeightSharing", ("transformer", False)),
    ("STDNetTrainer_ConvGRU", ("convgru", True)),
    ("STDNetTrainer_paperLoss", ("transformer", True)),
    ("STDNetTrainer_ConvGRU_smoke", ("convgru", True)),
])
def test_variants_change_only_their_setting(dataset, trainer, expected):
    import nnunet_ext.trainers as trainers

    pm = _plans_manager(dataset["pre"], TINY_PLANS)

    def build(name):
        return getattr(trainers, name).build_network_architecture(pm, pm.get_configuration("3d_fullres"), 3, 3, False)

    net, full = build(trainer), build("STDNetTrainer")
    assert (net.temporal_kind, net.share_weights) == expected
    # everything else as in the full model: phases, reference, encoder, skip fusion, head, decoder
    same = ("num_phases", "reference_phase", "encoder_kind", "cls_pool_channels")
    assert [getattr(net, a) for a in same] == [getattr(full, a) for a in same]
    assert (net.skip_fusion is None) == (full.skip_fusion is None)
    assert str(net.decoder) == str(full.decoder)

    def head(n):  # the head's input width follows the temporal modeler (CLS width or encoder width): the rest not
        return [(type(m).__name__, getattr(m, "out_features", None), getattr(m, "p", None))
                for m in n.cls_head.modules()]

    assert head(net) == head(full)
    if net.temporal_kind == "transformer":
        assert net.temporal.dim == 32  # temporal settings come from the STD-Net plans
    assert not net.decoder.deep_supervision


def _with_diagnostic_trainers(monkeypatch) -> None:
    """nnU-Net's trainer search path with the diagnostic trainers of benchmarks/trainers (as the README says)."""
    from nnunet_ext.paths import trainer_discovery_path

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([trainer_discovery_path(),
                                                              str(repo / "benchmarks" / "trainers")]))


def test_diagnostic_trainers_load_from_benchmarks_and_change_only_their_suspect(dataset, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_ext.trainers as trainers

    _with_diagnostic_trainers(monkeypatch)
    assert not hasattr(trainers, "STDNetTrainer_shallowTemporal")  # not part of the product
    pm = _plans_manager(dataset["pre"], TINY_PLANS)
    full = trainers.STDNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 3, 3, False)
    shallow_cls = recursive_find_trainer_class_by_name("STDNetTrainer_shallowTemporal")
    shallow = shallow_cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 3, 3, False)
    assert len(full.temporal.blocks) > 1 and len(shallow.temporal.blocks) == 1
    assert (shallow.temporal.dim, shallow.temporal.heads) == (full.temporal.dim, full.temporal.heads)
    assert str(shallow.decoder) == str(full.decoder) and str(shallow.cls_head) == str(full.cls_head)
    assert recursive_find_trainer_class_by_name("STDNetTrainer_headLR1e4").head_lr == 1e-4
    assert trainers.STDNetTrainer.head_lr == 3e-4
    pooled = recursive_find_trainer_class_by_name("EarlyFusionTrainer_predictionPool_gpu2500")
    assert pooled.head_pool_in_training == "prediction" and issubclass(pooled, trainers.EarlyFusionTrainer)


def test_trainer_toggles_deep_supervision_and_paper_loss_keeps_its_wrapper(dataset):
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_ext.paths import ensure_trainer_path
    from nnunet_ext.trainers.losses import DiceBCELoss

    ensure_trainer_path()
    tr = get_trainer_from_args(str(DATASET), "3d_fullres", 0, "STDNetTrainer_paperLoss", TINY_PLANS,
                               device=torch.device("cpu"))
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionWrapper) and isinstance(tr.loss.loss, DiceBCELoss)
    tr.set_deep_supervision_enabled(False)
    assert tr.network.decoder.deep_supervision is False
    tr.set_deep_supervision_enabled(True)
    assert tr.network.decoder.deep_supervision is True


def test_paper_protocol_trainer_uses_adamw_cosine_half_cls_weight_and_lesion_centred_patches(dataset, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.data.sampling import LesionCentredDataLoader
    from nnunet_ext.trainers.optim import WarmupCosineScheduler

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    tr = get_trainer_from_args(str(DATASET), "3d_fullres", 0, "STDNetTrainer_paperProtocol_smoke", TINY_PLANS,
                               device=torch.device("cpu"))
    tr.initialize()
    assert tr.loss_weights == {"seg": 1.0, "cls": 0.5}
    assert isinstance(tr.lr_scheduler, WarmupCosineScheduler)
    (group,) = tr.optimizer.param_groups
    assert (group["algorithm"], group["initial_lr"], group["weight_decay"]) == ("adamw", 1e-4, 1e-5)
    total = tr.num_epochs * tr.num_iterations_per_epoch
    assert (tr.lr_scheduler.total, tr.lr_scheduler.warmup) == (total, round(total * 20 / 500))
    assert tr.oversample_foreground_percent == 1.0
    dl_tr, _ = tr.get_dataloaders()
    loader = getattr(dl_tr, "data_loader", dl_tr)
    assert isinstance(loader, LesionCentredDataLoader) and loader.lesion_labels == (2,)
    for _ in range(3):  # every patch of every case with a lesion shows the lesion
        batch = next(dl_tr)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        assert all((t == 2).any() for t in target)


@pytest.mark.parametrize("trainer, hybrid", [("STDNetTrainer_smoke", True), ("STDNetTrainer_nnUNetSGD_smoke", False),
                                             ("STDNetTrainer_headLR1e4_smoke", True)])
def test_transformer_and_head_train_with_adamw_and_the_unet_with_nnunet_sgd(dataset, trainer, hybrid, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.trainers.optim import HybridLRScheduler, HybridSGDAdamW

    _with_diagnostic_trainers(monkeypatch)
    tr = get_trainer_from_args(str(DATASET), "3d_fullres", 0, trainer, TINY_PLANS, device=torch.device("cpu"))
    tr.initialize()
    if not hybrid:
        assert type(tr.optimizer) is torch.optim.SGD and tr.optimizer.defaults["momentum"] == 0.99
        return
    assert isinstance(tr.optimizer, HybridSGDAdamW) and isinstance(tr.lr_scheduler, HybridLRScheduler)
    sgd, adamw = tr.optimizer.param_groups
    names = {id(p): n for n, p in tr.network.named_parameters()}
    assert all(names[id(p)].startswith(("encoder.", "decoder.")) for p in sgd["params"])
    assert {names[id(p)].split(".")[0] for p in adamw["params"]} == {"temporal", "temporal_out", "cls_head"}
    assert (sgd["lr"], sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (tr.initial_lr, 0.99, True,
                                                                                    tr.weight_decay)
    assert (adamw["initial_lr"], adamw["weight_decay"]) == (tr.head_lr, tr.head_weight_decay)
    assert tr.head_lr == (1e-4 if "headLR1e4" in trainer else 3e-4)
    assert tr.warmup_iterations() == 1  # 5% of the smoke schedule's 2 iterations, at least 1


# ---------------------------------------------------------------------------------------------- training runs
def test_stdnet_trainer_trains_on_stdnet_plans_and_predicts(dataset, single_cpu, tmp_path):
    from nnunet_ext.trainers.run import train

    train(str(DATASET), "3d_fullres", "0", "STDNetTrainer_smoke", plans=TINY_PLANS, device="cpu")
    model = dataset["results"] / f"STDNetTrainer_smoke__{TINY_PLANS}__3d_fullres"
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    assert any(k.startswith("temporal.blocks.") for k in ckpt["network_weights"])
    assert (model / "fold_0" / "validation" / "classification.csv").is_file()
    assert _data_folders(dataset["pre"]) == ["nnUNetPlans_3d_fullres"]  # training did not preprocess again
    _predict_and_check(dataset, model, tmp_path / "pred", 0)
    _attention_and_check(dataset, tmp_path / "pred_input", tmp_path / "attention")


def _attention_and_check(dataset, inp: Path, out: Path) -> None:
    """``nnunet-ext attention`` on the trained model: per-lesion rows for the reference lesions, a plot per case,
    the maps on request; predicted lesions of a barely trained model may be none, which must not fail."""
    from nnunet_ext.cli import main

    common = ["attention", "-i", str(inp), "-d", str(DATASET), "-tr", "STDNetTrainer_smoke", "-p", TINY_PLANS,
              "-f", "0", "-device", "cpu", "--min_lesion_voxels", "1"]
    assert main([*common, "-o", str(out), "-s", str(dataset["raw"] / "labelsTr"), "--save_maps"]) == 0
    stored = json.loads((out / "phase_attention.json").read_text(encoding="utf-8"))
    rows = stored["lesions"]
    assert stored["lesion_source"] == "reference" and stored["phases"] and stored["layer"] == 1
    assert {r["case"] for r in rows} == {"case_000", "case_001"}
    for r in rows:
        shares = [r[f"attention_{p}"] for p in stored["phases"]] + [r["attention_cls"]]
        assert all(0 <= a <= 1 for a in shares) and abs(sum(shares) - 1) < 1e-3 and r["voxels"] >= 1
    assert (out / "case_000_phase_attention.png").stat().st_size > 0
    maps = np.load(out / "case_000_phase_attention.npz")
    assert maps["attention"].shape[0] == len(stored["phases"]) and maps["lesions"].max() >= 1
    # the same maps as images on the input image's grid and geometry, with the table's lesion ids
    image = sitk.ReadImage(str(inp / "case_000_0000.nii.gz"))
    lesions = sitk.ReadImage(str(out / "case_000_attention_lesions.nii.gz"))
    ids = sitk.GetArrayFromImage(lesions)
    case_rows = [r for r in rows if r["case"] == "case_000"]
    assert set(np.unique(ids)) - {0} == {r["lesion"] for r in case_rows}
    for phase in stored["phases"]:
        phase_map = sitk.ReadImage(str(out / f"case_000_attention_{phase}.nii.gz"))
        for other in (phase_map, lesions):
            assert other.GetSize() == image.GetSize()
            np.testing.assert_allclose(other.GetSpacing(), image.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(other.GetOrigin(), image.GetOrigin(), atol=1e-4)
        values = sitk.GetArrayFromImage(phase_map)
        assert values.min() >= 0 and values.max() <= 1
        for r in case_rows:
            assert abs(values[ids == r["lesion"]].mean() - r[f"attention_{phase}"]) < 0.02
    assert main([*common, "-o", str(out / "predicted")]) == 0  # lesions from the model's own prediction
    assert json.loads((out / "predicted" / "phase_attention.json").read_text(encoding="utf-8"))[
        "lesion_source"] == "prediction"


@pytest.mark.parametrize("trainer,plans", [
    ("STDNetTrainer_noTemporal_smoke", "nnUNetPlans"),  # vanilla plans: U-Net topology (temporal part unused)
    ("STDNetTrainer_noWeightSharing_smoke", TINY_PLANS),
    ("STDNetTrainer_ConvGRU_smoke", TINY_PLANS),
    ("STDNetTrainer_paperLoss_smoke", TINY_PLANS),
    ("STDNetTrainer_paperProtocol_smoke", TINY_PLANS),
])
def test_ablation_and_loss_trainers_train_and_predict(dataset, single_cpu, tmp_path, trainer, plans):
    from nnunet_ext.trainers.run import train

    train(str(DATASET), "3d_fullres", "1", trainer, plans=plans, device="cpu")
    model = dataset["results"] / f"{trainer}__{plans}__3d_fullres"
    assert (model / "fold_1" / "checkpoint_final.pth").is_file()
    _predict_and_check(dataset, model, tmp_path / "pred", 1)


def test_stock_console_scripts_train_and_predict_stdnet(dataset, tmp_path):
    """``nnUNetv2_train ... -tr STDNetTrainer_smoke -device cpu`` (nnU-Net's own entry point, finding the trainer
    through nnUNet_extTrainer) and ``nnunet-ext predict`` in subprocesses."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    assert env.get("nnUNet_extTrainer"), "the nnunet_dirs fixture exports nnUNet_extTrainer"
    subprocess.run([str(bin_dir / "nnUNetv2_train"), str(DATASET), "3d_fullres", "2", "-tr", "STDNetTrainer_smoke",
                    "-p", TINY_PLANS, "-device", "cpu"], check=True, env=env, capture_output=True, timeout=600)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for f in sorted((dataset["raw"] / "imagesTr").glob("case_002_*.nii.gz")):
        shutil.copy(f, inp / f.name)
    subprocess.run([str(bin_dir / "nnunet-ext"), "predict", "-i", str(inp), "-o", str(out), "-d", str(DATASET),
                    "-c", "3d_fullres", "-tr", "STDNetTrainer_smoke", "-p", TINY_PLANS, "-f", "2", "-device", "cpu",
                    "--disable_tta", "-npp", "1", "-nps", "1"], check=True, env=env, capture_output=True, timeout=600)
    assert len((out / "classification.csv").read_text(encoding="utf-8").strip().splitlines()) == 2
    assert (out / "case_002.nii.gz").is_file()
