"""Safe checkpoint loading (``torch.load(weights_only=True)`` with NumPy's plain scalars allowed): checkpoints of
the nnunet-ext trainers and of vanilla nnU-Net load, and every entry point that loads a model (predict, attention,
robustness, the efficiency step of benchmark, ``--c``, ``-pretrained_weights``) refuses a crafted checkpoint without
running it."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from nnunet_ext.cli import main
from nnunet_ext.data.checkpoints import UnsafeCheckpointError, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class _Payload:
    """Pickles as a call of ``os.system``: unpickling it with ``weights_only=False`` creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(checkpoint: str, marker) -> None:
    """Add a pickled callable to a real checkpoint, as an attacker editing a model folder would."""
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["logging"]["note"] = _Payload(marker)
    torch.save(ckpt, checkpoint)


@pytest.fixture(scope="module")
def vanilla_model(tiny_multiphase, tmp_path_factory):
    """A model folder trained by nnU-Net's own ``nnUNetTrainer`` (its ``save_checkpoint``: NumPy scalars in the
    logger's values), one epoch of two iterations, in a results folder of its own."""
    from nnunetv2.run.run_training import get_trainer_from_args

    results = tmp_path_factory.mktemp("vanilla_results")
    saved = os.environ["nnUNet_results"]
    os.environ["nnUNet_results"] = str(results)
    try:
        trainer = get_trainer_from_args(str(tiny_multiphase["id"]), "3d_fullres", 0, "nnUNetTrainer",
                                        device=torch.device("cpu"))
        assert type(trainer).__module__.startswith("nnunetv2.")  # nnU-Net's own class and save_checkpoint
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
        trainer.run_training()
    finally:
        os.environ["nnUNet_results"] = saved
    return results / tiny_multiphase["name"] / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def test_vanilla_and_nnunet_ext_checkpoints_load_safely(vanilla_model, smoke_models):
    vanilla = vanilla_model / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="Weights only load failed"):  # what nnU-Net's logger values need
        torch.load(vanilla, weights_only=True)
    ckpt = load_checkpoint(vanilla)
    assert ckpt["trainer_name"] == "nnUNetTrainer"
    assert any(isinstance(v, np.floating) for v in ckpt["logging"]["mean_fg_dice"])
    for trainer in ("EarlyFusionTrainer_smoke", "nnUNetTrainer_smoke"):
        ours = load_checkpoint(smoke_models["folders"][trainer] / f"fold_{smoke_models['fold']}" /
                               "checkpoint_final.pth")
        assert ours["trainer_name"] == trainer and "nnunet_ext_rng_state" in ours
        assert all(isinstance(v, torch.Tensor) for v in ours["network_weights"].values())


def test_predict_with_a_vanilla_model_loads_it_safely(vanilla_model, tiny_multiphase, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for c in range(3):
        shutil.copy(tiny_multiphase["raw"] / "imagesTr" / f"case_001_{c:04d}.nii.gz", images)
    rc = main(["predict", "-i", str(images), "-o", str(tmp_path / "pred"), "-m", str(vanilla_model), "-f", "0",
               "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "pred" / "case_001.nii.gz").is_file()


@pytest.fixture
def planted_model(smoke_models, tmp_path):
    """A copy of the EarlyFusionTrainer_smoke model folder whose checkpoint carries a payload."""
    model = tmp_path / "model"
    shutil.copytree(smoke_models["folders"]["EarlyFusionTrainer_smoke"], model)
    marker = tmp_path / "payload_ran"
    _plant(str(model / f"fold_{smoke_models['fold']}" / "checkpoint_final.pth"), marker)
    return model, marker, smoke_models


def test_a_planted_payload_is_refused_by_every_entry_point_without_running(planted_model, tmp_path, capsys):
    model, marker, smoke = planted_model
    fold = str(smoke["fold"])
    ckpt = model / f"fold_{fold}" / "checkpoint_final.pth"
    images = tmp_path / "images"
    images.mkdir()
    for c in range(3):
        shutil.copy(smoke["dataset"]["raw"] / "imagesTr" / f"case_001_{c:04d}.nii.gz", images)
    commands = {
        "predict": ["predict", "-i", str(images), "-o", str(tmp_path / "pred"), "-m", str(model), "-f", fold,
                    "-device", "cpu"],
        "attention": ["attention", "-i", str(images), "-o", str(tmp_path / "att"), "-m", str(model), "-f", fold,
                      "-device", "cpu"],
        "robustness": ["robustness", "-m", str(model), "-f", fold, "-i", str(smoke["dataset"]["raw"]), "--cases",
                       "case_001", "-o", str(tmp_path / "rob"), "-device", "cpu"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"checkpoint {ckpt} holds objects that only load with unsafe unpickling (it refers to posix.system)" \
               in err, (name, err)
        assert "--trust-checkpoint" in err and "nothing in it was executed" in err
        assert not marker.exists(), name
    assert not (tmp_path / "pred" / "case_001.nii.gz").exists()
    # the efficiency step of benchmark loads through the same predictor
    from nnunet_ext.evaluation.efficiency import time_inference

    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling"):
        time_inference(str(model), fold, torch.zeros(3, 16, 32, 32), torch.device("cpu"))
    assert not marker.exists()
    # only the user's explicit trust loads it (and then it runs)
    assert load_checkpoint(ckpt, trust=True)["trainer_name"] == "EarlyFusionTrainer_smoke"
    assert marker.exists()


def test_continue_and_pretrained_weights_load_safely(planted_model, tmp_path, monkeypatch):
    from nnunet_ext.trainers.run import safe_pretrained_weights

    model, marker, smoke = planted_model
    evil = str(model / f"fold_{smoke['fold']}" / "checkpoint_final.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"unsafe unpickling .*posix\.system"):
        safe_pretrained_weights(evil, str(tmp_path / "fold"))
    good = smoke["folders"]["nnUNetTrainer_smoke"] / f"fold_{smoke['fold']}" / "checkpoint_final.pth"
    copy = safe_pretrained_weights(str(good), str(tmp_path / "fold"))
    assert set(torch.load(copy, weights_only=True)) == {"network_weights"}  # tensors only
    # --c: the seeded trainers read their checkpoints with the safe loader
    from nnunetv2.run.run_training import get_trainer_from_args

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))  # the trainer's own log stays here
    trainer = get_trainer_from_args(str(smoke["dataset"]["id"]), "3d_fullres", 0, "nnUNetTrainer_smoke",
                                    device=torch.device("cpu"))
    vanilla_evil = tmp_path / "latest.pth"
    shutil.copy(good, vanilla_evil)
    _plant(str(vanilla_evil), marker)
    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling"):
        trainer.load_checkpoint(str(vanilla_evil))
    assert not marker.exists()
    trainer.load_checkpoint(str(good))
    assert trainer.current_epoch == 1
    # our multi-task trainers too (their load_checkpoint reads the file itself)
    ours = get_trainer_from_args(str(smoke["dataset"]["id"]), "3d_fullres", 0, "EarlyFusionTrainer_smoke",
                                 device=torch.device("cpu"))
    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling"):
        ours.load_checkpoint(str(evil))
    assert not marker.exists()
    ours.load_checkpoint(str(smoke["folders"]["EarlyFusionTrainer_smoke"] / f"fold_{smoke['fold']}"
                             / "checkpoint_final.pth"))
    assert ours.current_epoch == 1


def test_unreadable_checkpoints_are_named(tmp_path):
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint .*missing\.pth does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    cut = tmp_path / "cut.pth"
    torch.save({"network_weights": {"w": torch.zeros(100)}}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(UnsafeCheckpointError, match=r"cut\.pth cannot be read .*truncated or not a PyTorch"):
        load_checkpoint(cut)
