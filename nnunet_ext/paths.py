"""Paths and names shared by every layer: where nnU-Net finds the nnunet-ext trainers, and file-name-safe names.

Kept at the bottom of the package (it imports nothing from nnunet_ext) so that inference and evaluation can put the
trainers on nnU-Net's search path without importing the trainers package.
"""

from __future__ import annotations

import os
import re

TRAINER_PATH_ENV = "nnUNet_extTrainer"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def trainer_discovery_path() -> str:
    """The folder to put in ``nnUNet_extTrainer``: one shim module that re-exports :mod:`nnunet_ext.trainers`."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers", "discovery")


def ensure_trainer_path() -> None:
    """Add nnunet-ext's trainer folder to ``nnUNet_extTrainer`` (folders the user set are kept, first)."""
    path = trainer_discovery_path()
    current = [p for p in os.environ.get(TRAINER_PATH_ENV, "").split(os.pathsep) if p]
    if path not in current:
        os.environ[TRAINER_PATH_ENV] = os.pathsep.join([*current, path])


def safe_name(text: str) -> str:
    """A file-name-safe version of a method, structure or case name."""
    return _SAFE.sub("_", text)
