"""What ``nnunet-ext train`` checks before nnU-Net starts: the device, preprocessed data that an interrupted
``plan-and-preprocess`` left incomplete, and temporary checkpoints a killed run left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nnunet_ext.cli import main
from nnunet_ext.trainers.seeding import remove_stale_checkpoint_temps


def test_missing_gpu_is_named_with_the_fix(tiny_multiphase, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", str(tiny_multiphase["id"]), "3d_fullres", "0", "-device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "-device cuda was requested but no CUDA device is available. Fix: pass -device cpu." in err
    assert "Traceback" not in err
    assert main(["train", str(tiny_multiphase["id"]), "3d_fullres", "0", "-device", "gpu0"]) == 2
    assert "-device 'gpu0' is not a device. Fix:" in capsys.readouterr().err


def test_interrupted_preprocessing_says_to_rerun_it(nnunet_dirs, capsys):
    from nnunet_ext.data.fixtures import make_tiny_multiphase_dataset
    from nnunet_ext.planners.api import plan_and_preprocess

    make_tiny_multiphase_dataset(str(nnunet_dirs["nnUNet_raw"]), 913, n_cases=5)
    plan_and_preprocess(913, "ExperimentPlanner", ("3d_fullres",), num_processes=1)
    data = nnunet_dirs["nnUNet_preprocessed"] / "Dataset913_TinyMultiphase" / "nnUNetPlans_3d_fullres"
    for f in data.glob("case_003*"):  # what a kill during preprocessing leaves: some cases never written
        f.unlink()
    assert main(["train", "913", "3d_fullres", "0", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "1 case(s) of the split / metadata have no preprocessed data" in err and "case_003" in err
    assert "preprocessing was interrupted" in err and "Fix: rerun `nnunet-ext plan-and-preprocess -d 913" in err
    assert "correct the ids" not in err


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_checkpoints_are_removed(tmp_path):
    dead = tmp_path / f"checkpoint_latest.pth.tmp{_dead_pid()}"
    dead.write_bytes(b"half a checkpoint")
    live = tmp_path / f"checkpoint_best.pth.tmp{os.getpid()}"  # this process is still writing it
    live.write_bytes(b"being written")
    other = tmp_path / "checkpoint_final.pth"
    other.write_bytes(b"kept")
    assert remove_stale_checkpoint_temps(str(tmp_path)) == [str(dead)]
    assert live.exists() and other.exists() and not dead.exists()
    old = os.path.getmtime(live) - 7200
    os.utime(live, (old, old))
    assert remove_stale_checkpoint_temps(str(tmp_path)) == []  # never this process's own file
    assert live.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_train_removes_a_killed_runs_temporary_checkpoint(tiny_multiphase, tmp_path, monkeypatch, capsys):
    from nnunet_ext.trainers.run import train

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    fold = tmp_path / "results" / tiny_multiphase["name"] / "nnUNetTrainer_smoke__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    stale = fold / f"checkpoint_latest.pth.tmp{_dead_pid()}"
    stale.write_bytes(b"0" * 1024)
    train(str(tiny_multiphase["id"]), "3d_fullres", "0", "nnUNetTrainer_smoke", device="cpu")
    assert not stale.exists() and (fold / "checkpoint_final.pth").is_file()
    assert f"removed {stale}" in capsys.readouterr().out
