"""Run nnU-Net's own training entry point with the nnunet-ext trainers on its search path."""

from __future__ import annotations

import os

import torch

from nnunet_ext.errors import NnunetExtError
from nnunet_ext.paths import ensure_trainer_path


class ExistingTrainingError(NnunetExtError):
    """A fold folder already holds a checkpoint and training was asked to start from scratch."""


def refuse_to_overwrite(dataset: str, configuration: str, fold: str, trainer: str, plans: str) -> None:
    """nnU-Net, started without ``--c`` on a fold that already has a checkpoint, trains from scratch and overwrites
    it. Refuse instead, naming the folder and the choices."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        return  # nnU-Net reports the unknown dataset itself
    folder = get_output_folder(name, trainer, plans, configuration, fold if fold == "all" else int(fold))
    found = [f for f in ("checkpoint_final.pth", "checkpoint_latest.pth") if os.path.isfile(os.path.join(folder, f))]
    if found:
        state = "a finished training" if found[0] == "checkpoint_final.pth" else "an unfinished training"
        raise ExistingTrainingError(
            f"{folder} already holds {state} ({found[0]}); training from scratch would overwrite it. Fix: add --c to "
            "continue it (a finished one then only re-runs what is missing), --val to re-run its validation, or "
            "move / delete that folder to train again from scratch.")


def train(dataset: str, configuration: str, fold: str, trainer: str = "EarlyFusionTrainer",
          plans: str = "nnUNetPlans", device: str = "cuda", continue_training: bool = False,
          only_validation: bool = False) -> None:
    """``nnUNetv2_train dataset configuration fold -tr trainer -p plans -device device [--c] [--val]``."""
    from nnunetv2.run.run_training import run_training

    ensure_trainer_path()
    if not continue_training and not only_validation:
        refuse_to_overwrite(dataset, configuration, fold, trainer, plans)
    dev = torch.device(device)
    run_training(dataset, configuration, fold, trainer, plans, continue_training=continue_training,
                 only_run_validation=only_validation, device=dev)
