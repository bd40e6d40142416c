"""Small building blocks shared by ``nnunet-ext demo`` and the scripts in ``examples/``: a self-contained nnU-Net
workspace, training that skips finished folds and resumes interrupted ones, and quiet logging of nnU-Net's prints."""

from __future__ import annotations

import contextlib
import os
import sys


def use_workspace(root: str, overwrite_env: bool = True) -> dict[str, str]:
    """Point ``nnUNet_raw/preprocessed/results`` at ``root/nnUNet_*`` (created) and put nnunet-ext's trainers on
    nnU-Net's search path. With ``overwrite_env=False`` variables the user already exported are kept."""
    from nnunet_ext.trainers.run import ensure_trainer_path

    root = os.path.abspath(root)
    env = {}
    for name in ("raw", "preprocessed", "results"):
        key = f"nnUNet_{name}"
        if overwrite_env or key not in os.environ:
            os.environ[key] = os.path.join(root, key)
        env[key] = os.environ[key]
        os.makedirs(env[key], exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "agg")
    ensure_trainer_path()
    return env


def cpu_friendly_processes(device: str) -> None:
    """On a CPU, keep nnU-Net from starting more worker processes than there are cores."""
    cpus = os.cpu_count() or 1
    os.environ.setdefault("nnUNet_def_n_proc", str(min(2, cpus)))
    if device == "cpu":
        os.environ.setdefault("nnUNet_n_proc_DA", "0" if cpus <= 2 else str(min(4, cpus - 1)))


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str = "3d_fullres") -> str:
    from nnunetv2.paths import nnUNet_results

    return os.path.join(nnUNet_results.get(), dataset_name, f"{trainer}__{plans}__{configuration}")


def train_if_needed(dataset_name: str, configuration: str, fold, trainer: str, plans: str, device: str,
                    log_path: str | None = None) -> str:
    """Train one fold with nnU-Net's own entry point unless ``checkpoint_final.pth`` exists; an interrupted run
    (a fold folder with a checkpoint) is continued (``--c``). Returns the fold folder."""
    from nnunet_ext.trainers.run import train

    folder = os.path.join(model_folder(dataset_name, trainer, plans, configuration), f"fold_{fold}")
    if os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        print(f"    {trainer} fold {fold}: already trained ({folder})", file=sys.stderr)
        return folder
    resume = os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
    print(f"    {trainer} ({plans}) fold {fold}{': resuming' if resume else ''}", file=sys.stderr, flush=True)
    with quiet(log_path):
        train(dataset_name, configuration, str(fold), trainer, plans, device=device, continue_training=resume)
    return folder


@contextlib.contextmanager
def quiet(log_path: str | None):
    """Send nnU-Net's prints (stdout) to ``log_path`` (appending); progress bars (stderr) stay on the terminal."""
    if log_path is None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def stage(msg: str) -> None:
    print(f"\n==> {msg}", file=sys.stderr, flush=True)
