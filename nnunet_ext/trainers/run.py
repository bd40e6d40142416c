"""Run nnU-Net's own training entry point with the nnunet-ext trainers on its search path."""

from __future__ import annotations

import os

import torch

from nnunet_ext.errors import NnunetExtError
from nnunet_ext.paths import ensure_trainer_path


class ExistingTrainingError(NnunetExtError):
    """A fold folder already holds a checkpoint and training was asked to start from scratch."""


class DeviceError(NnunetExtError, RuntimeError):
    """``-device`` names a device this machine does not have."""


def torch_device(device: str) -> torch.device:
    """``-device`` as a torch device; a device type this machine lacks (CUDA without a GPU, MPS off a Mac) or a
    malformed name is an error with the fix instead of torch's traceback."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"-device {device!r} is not a device. Fix: pass -device cuda, cpu or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"-device {device} was requested but no CUDA device is available. Fix: pass -device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"-device {device}: this machine has {torch.cuda.device_count()} CUDA device(s). Fix: pass "
                          "-device cuda (and choose the GPU with CUDA_VISIBLE_DEVICES).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"-device {device} was requested but MPS is not available. Fix: pass -device cpu.")
    return dev


def fold_folder(dataset: str, configuration: str, fold: str, trainer: str, plans: str) -> str | None:
    """nnU-Net's output folder of one fold (None when the dataset id is unknown: nnU-Net reports that itself)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        return None
    return get_output_folder(name, trainer, plans, configuration, fold if fold == "all" else int(fold))


def refuse_to_overwrite(dataset: str, configuration: str, fold: str, trainer: str, plans: str) -> None:
    """nnU-Net, started without ``--c`` on a fold that already has a checkpoint, trains from scratch and overwrites
    it. Refuse instead, naming the folder and the choices."""
    folder = fold_folder(dataset, configuration, fold, trainer, plans)
    if folder is None:
        return
    found = [f for f in ("checkpoint_final.pth", "checkpoint_latest.pth") if os.path.isfile(os.path.join(folder, f))]
    if found:
        state = "a finished training" if found[0] == "checkpoint_final.pth" else "an unfinished training"
        raise ExistingTrainingError(
            f"{folder} already holds {state} ({found[0]}); training from scratch would overwrite it. Fix: add --c to "
            "continue it (a finished one then only re-runs what is missing), --val to re-run its validation, or "
            "move / delete that folder to train again from scratch.")


def safe_pretrained_weights(path: str, folder: str, trust: bool | None = None) -> str:
    """``-pretrained_weights``, read with the safe loader (:mod:`nnunet_ext.data.checkpoints`) and written again as a
    tensors-only checkpoint in ``folder`` (returned): nnU-Net's ``load_pretrained_weights`` reads the file it is
    given with ``torch.load(weights_only=False)``, so it only ever sees the verified copy."""
    from nnunet_ext.data.checkpoints import UnsafeCheckpointError, load_checkpoint, write_weights_only

    checkpoint = load_checkpoint(path, map_location="cpu", trust=trust)
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UnsafeCheckpointError(f"-pretrained_weights {path} holds no 'network_weights' dict of tensors (an "
                                    "nnU-Net checkpoint has one). Fix: pass a checkpoint_final.pth or "
                                    "checkpoint_best.pth written by nnU-Net or an nnunet-ext trainer.")
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, f".pretrained_weights.tmp{os.getpid()}.pth")
    write_weights_only(weights, out)
    return out


def train(dataset: str, configuration: str, fold: str, trainer: str = "EarlyFusionTrainer",
          plans: str = "nnUNetPlans", device: str = "cuda", continue_training: bool = False,
          only_validation: bool = False, pretrained_weights: str | None = None,
          trust_checkpoint: bool | None = None) -> None:
    """``nnUNetv2_train dataset configuration fold -tr trainer -p plans -device device [--c] [--val]
    [-pretrained_weights FILE]``.

    Before nnU-Net starts: the device exists, a fold with a checkpoint is not silently restarted, temporary
    checkpoints a killed run left in the fold folder are removed, and ``pretrained_weights`` is read with the safe
    loader (:func:`safe_pretrained_weights`). ``trust_checkpoint`` accepts checkpoints (``--c``, pretrained weights)
    that need unsafe unpickling; it is passed to the trainer process as ``nnUNet_ext_trust_checkpoint``.
    """
    from nnunetv2.run.run_training import run_training

    from nnunet_ext.data.checkpoints import TRUST_ENV
    from nnunet_ext.trainers.seeding import remove_stale_checkpoint_temps

    ensure_trainer_path()
    dev = torch_device(device)
    if not continue_training and not only_validation:
        refuse_to_overwrite(dataset, configuration, fold, trainer, plans)
    folder = fold_folder(dataset, configuration, fold, trainer, plans)
    if folder is not None and os.path.isdir(folder):
        for path in remove_stale_checkpoint_temps(folder):
            print(f"removed {path}, a checkpoint left half-written by a killed run")
    saved = os.environ.get(TRUST_ENV)
    if trust_checkpoint:
        os.environ[TRUST_ENV] = "1"
    verified = None
    try:
        if pretrained_weights is not None:
            if continue_training or only_validation:
                raise ExistingTrainingError("-pretrained_weights only applies to a training started from scratch. Fix: "
                                            "drop --c / --val, or drop -pretrained_weights.")
            verified = safe_pretrained_weights(pretrained_weights, folder or os.getcwd(), trust_checkpoint)
        run_training(dataset, configuration, fold, trainer, plans, pretrained_weights=verified,
                     continue_training=continue_training, only_run_validation=only_validation, device=dev)
    finally:
        if verified is not None and os.path.exists(verified):
            os.remove(verified)
        if trust_checkpoint:
            if saved is None:
                os.environ.pop(TRUST_ENV, None)
            else:
                os.environ[TRUST_ENV] = saved
