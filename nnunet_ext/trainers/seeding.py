"""Optional seeding of nnU-Net training through an environment variable, in nnU-Net's style (``nnUNet_n_proc_DA``).

nnU-Net does not seed training: weight initialisation, patch sampling and augmentation draw from the global Python,
NumPy and torch generators, and each data-augmentation worker seeds itself at random. That is fine for one model and
wrong for a comparison that should be rerun by someone else. With ``export nnUNet_ext_seed=<int>`` every nnunet-ext
trainer (and the vanilla ``nnUNetTrainer_<schedule>`` references it exports):

* seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA) with the seed (plus the DDP rank, so
  ranks draw different patches; DDP broadcasts rank 0's initial weights) before the network is built;
* gives the data-augmentation workers fixed seeds (``seed + 1 + worker index``) instead of random ones; a run resumed
  at epoch ``e > 0`` derives them from ``(seed, e, worker index)``, so it does not replay epoch 0's augmentations;
* on ``--c``, restores the Python, NumPy and torch generator states that every checkpoint stores (key
  ``nnunet_ext_rng_state``; nnU-Net's own checkpoints hold none), at the start of the first resumed epoch.

What this makes reproducible: with ``nnUNet_n_proc_DA=0`` (single-process loading) on the CPU, the weights, the
patches and the losses of two runs are identical (tested). With worker processes, every worker produces the same
stream, but the order in which their batches arrive depends on timing (nnU-Net's ``NonDetMultiThreadedAugmenter``);
on a GPU, cuDNN's algorithm search and atomic reductions add run-to-run differences of their own. A seeded run killed
and resumed with ``--c`` ends with the same weights as an uninterrupted one on the CPU with ``nnUNet_n_proc_DA=0``
(tested). Unset, or empty: nnU-Net's behaviour, unchanged (the generator states are still written into the
checkpoints, but a resumed unseeded run does not restore them: a rerun of a crashed epoch then draws new patches).
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


RNG_KEY = "nnunet_ext_rng_state"


def rng_state() -> dict:
    """The global Python, NumPy and torch generator states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s output (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def worker_seeds(seed: int, num_processes: int, start_epoch: int = 0) -> list[int]:
    """Seeds of the augmentation workers: ``seed + 1 + i`` for a run starting at epoch 0, otherwise drawn from
    ``SeedSequence((seed, start_epoch, i))`` (a resumed run gets new, still reproducible, streams)."""
    if not start_epoch:
        return [(seed + 1 + i) % 2 ** 32 for i in range(num_processes)]
    return [int(np.random.SeedSequence((seed, start_epoch, i)).generate_state(1)[0]) for i in range(num_processes)]


@contextmanager
def seeded_workers(seed: int, start_epoch: int = 0):
    """Make ``nnUNetTrainer.get_dataloaders`` start its augmentation workers with :func:`worker_seeds`."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    original = trainer_module.NonDetMultiThreadedAugmenter

    def make(*args, num_processes: int, seeds=None, **kwargs):
        if seeds is None:
            seeds = worker_seeds(seed, num_processes, start_epoch)
        return original(*args, num_processes=num_processes, seeds=seeds, **kwargs)

    with mock.patch.object(trainer_module, "NonDetMultiThreadedAugmenter", make):
        yield


class EnvSeededTrainer:
    """Mixin for ``nnUNetTrainer`` subclasses: applies ``nnUNet_ext_seed`` (module docstring). Put it before the
    trainer in the bases; it wraps ``initialize``, ``get_dataloaders``, ``save_checkpoint``, ``load_checkpoint`` and
    ``on_train_epoch_start`` and calls the next class's."""

    _pending_rng_state: dict | None = None

    def initialize(self):
        seed = training_seed()
        if seed is not None and not getattr(self, "was_initialized", False):
            seed_everything(seed + int(getattr(self, "local_rank", 0)))
            self.print_to_log_file(f"{SEED_ENV}={seed}: Python, NumPy and torch seeded before building the network")
        return super().initialize()

    def get_dataloaders(self):
        seed = training_seed()
        rank = int(getattr(self, "local_rank", 0))
        start = int(getattr(self, "current_epoch", 0))
        with seeded_workers(seed + 1000 * rank, start) if seed is not None else nullcontext():
            return super().get_dataloaders()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the generator states (nnU-Net builds the dict inside its method and saves it at
        once; the dict is extended on its way to ``torch.save``)."""
        original = torch.save

        def save_with_rng(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "network_weights" in obj and RNG_KEY not in obj:
                obj = {**obj, RNG_KEY: rng_state()}
            return original(obj, f, *args, **kwargs)

        with mock.patch.object(torch, "save", save_with_rng):
            return super().save_checkpoint(filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load; the generator states are taken from the checkpoint on its way out of ``torch.load`` (nnU-Net
        only accepts a file name here, whatever its signature says)."""
        found = [filename_or_checkpoint.get(RNG_KEY)] if isinstance(filename_or_checkpoint, dict) else []
        original = torch.load

        def load_and_keep_rng(*args, **kwargs):
            obj = original(*args, **kwargs)
            if isinstance(obj, dict) and "network_weights" in obj:
                found.append(obj.get(RNG_KEY))
            return obj

        with mock.patch.object(torch, "load", load_and_keep_rng):
            super().load_checkpoint(filename_or_checkpoint)
        if found and found[-1] is not None and training_seed() is not None:
            self._pending_rng_state = found[-1]  # restored when the first resumed epoch starts

    def on_train_epoch_start(self):
        state, self._pending_rng_state = self._pending_rng_state, None
        if state is not None:
            set_rng_state(state)
            self.print_to_log_file(f"{SEED_ENV}: generator states of the checkpoint restored (epoch "
                                   f"{self.current_epoch})")
        return super().on_train_epoch_start()


def with_env_seed(base: type) -> tuple[type, ...]:
    """The bases for a subclass of ``base`` that honours ``nnUNet_ext_seed`` (``base`` alone if it already does)."""
    return (base,) if issubclass(base, EnvSeededTrainer) else (EnvSeededTrainer, base)


__all__ = ["RNG_KEY", "SEED_ENV", "EnvSeededTrainer", "rng_state", "seed_everything", "seeded_workers",
           "set_rng_state", "training_seed", "with_env_seed", "worker_seeds"]
