"""Run nnU-Net's own training entry point with the nnunet-ext trainers on its search path."""

from __future__ import annotations

import os

import torch


def ensure_trainer_path() -> None:
    """Add nnunet-ext's trainer folder to ``nnUNet_extTrainer`` (kept if the user already set other folders)."""
    from nnunet_ext.trainers import trainer_discovery_path

    path = trainer_discovery_path()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if path not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([*current, path])


def train(dataset: str, configuration: str, fold: str, trainer: str = "EarlyFusionTrainer",
          plans: str = "nnUNetPlans", device: str = "cuda", continue_training: bool = False,
          only_validation: bool = False) -> None:
    """``nnUNetv2_train dataset configuration fold -tr trainer -p plans -device device [--c] [--val]``."""
    from nnunetv2.run.run_training import run_training

    ensure_trainer_path()
    dev = torch.device(device)
    run_training(dataset, configuration, fold, trainer, plans, continue_training=continue_training,
                 only_run_validation=only_validation, device=dev)
