"""Optional seeding of nnU-Net training through an environment variable, in nnU-Net's style (``nnUNet_n_proc_DA``).

nnU-Net does not seed training: weight initialisation, patch sampling and augmentation draw from the global Python,
NumPy and torch generators, and each data-augmentation worker seeds itself at random. That is fine for one model and
wrong for a comparison that should be rerun by someone else. With ``export nnUNet_ext_seed=<int>`` every nnunet-ext
trainer (and the vanilla ``nnUNetTrainer_<schedule>`` references it exports):

* seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA) with the seed (plus the DDP rank, so
  ranks draw different patches; DDP broadcasts rank 0's initial weights) before the network is built;
* gives the data-augmentation workers fixed seeds (``seed + 1 + worker index``) instead of random ones.

What this makes reproducible: with ``nnUNet_n_proc_DA=0`` (single-process loading) on the CPU, the weights, the
patches and the losses of two runs are identical (tested). With worker processes, every worker produces the same
stream, but the order in which their batches arrive depends on timing (nnU-Net's ``NonDetMultiThreadedAugmenter``);
on a GPU, cuDNN's algorithm search and atomic reductions add run-to-run differences of their own. A run resumed with
``--c`` is not bitwise equal to an uninterrupted one (nnU-Net's checkpoints do not hold generator states). Unset, or
empty: nnU-Net's behaviour, unchanged.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from unittest import mock

import numpy as np
import torch

SEED_ENV = "nnUNet_ext_seed"


def training_seed() -> int | None:
    """The seed from ``nnUNet_ext_seed`` (None when unset or empty); a clear error for anything but 0 .. 2**32 - 1."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return None
    try:
        seed = int(raw)
    except ValueError:
        raise RuntimeError(f"{SEED_ENV}={raw!r} is not an integer. Fix: export {SEED_ENV}=0 (any integer from 0 to "
                           f"{2 ** 32 - 1}), or unset it for nnU-Net's unseeded training.") from None
    if not 0 <= seed < 2 ** 32:
        raise RuntimeError(f"{SEED_ENV}={seed} is out of range. Fix: use an integer from 0 to {2 ** 32 - 1}.")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


@contextmanager
def seeded_workers(seed: int):
    """Make ``nnUNetTrainer.get_dataloaders`` start its augmentation workers with seeds ``seed + 1 + i``."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    original = trainer_module.NonDetMultiThreadedAugmenter

    def make(*args, num_processes: int, seeds=None, **kwargs):
        if seeds is None:
            seeds = [(seed + 1 + i) % 2 ** 32 for i in range(num_processes)]
        return original(*args, num_processes=num_processes, seeds=seeds, **kwargs)

    with mock.patch.object(trainer_module, "NonDetMultiThreadedAugmenter", make):
        yield


class EnvSeededTrainer:
    """Mixin for ``nnUNetTrainer`` subclasses: applies ``nnUNet_ext_seed`` (module docstring). Put it before the
    trainer in the bases; it only wraps ``initialize`` and ``get_dataloaders`` and calls the next class's."""

    def initialize(self):
        seed = training_seed()
        if seed is not None and not getattr(self, "was_initialized", False):
            seed_everything(seed + int(getattr(self, "local_rank", 0)))
            self.print_to_log_file(f"{SEED_ENV}={seed}: Python, NumPy and torch seeded before building the network")
        return super().initialize()

    def get_dataloaders(self):
        seed = training_seed()
        rank = int(getattr(self, "local_rank", 0))
        with seeded_workers(seed + 1000 * rank) if seed is not None else nullcontext():
            return super().get_dataloaders()


def with_env_seed(base: type) -> tuple[type, ...]:
    """The bases for a subclass of ``base`` that honours ``nnUNet_ext_seed`` (``base`` alone if it already does)."""
    return (base,) if issubclass(base, EnvSeededTrainer) else (EnvSeededTrainer, base)


__all__ = ["SEED_ENV", "EnvSeededTrainer", "seed_everything", "seeded_workers", "training_seed", "with_env_seed"]
