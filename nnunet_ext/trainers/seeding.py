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

import numpy as np
import torch

from nnunet_ext.data.checkpoints import load_checkpoint

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


class EnvSeededTrainer:
    """Mixin for ``nnUNetTrainer`` subclasses: applies ``nnUNet_ext_seed`` (module docstring) and writes
    checkpoints atomically. Put it before the trainer in the bases; it overrides ``initialize``,
    ``get_dataloaders``, ``save_checkpoint``, ``load_checkpoint`` and ``on_train_epoch_start`` and calls the next
    class's where it extends them.

    ``get_dataloaders``, ``save_checkpoint`` and ``load_checkpoint`` are written out here rather than extended: nnU-Net
    builds its augmentation workers (seeds) and its checkpoint dict (no room for the generator states) inside these
    methods, and its ``load_checkpoint`` accepts only a file name.
    """

    _pending_rng_state: dict | None = None

    def initialize(self):
        seed = training_seed()
        if seed is not None and not getattr(self, "was_initialized", False):
            seed_everything(seed + int(getattr(self, "local_rank", 0)))
            self.print_to_log_file(f"{SEED_ENV}={seed}: Python, NumPy and torch seeded before building the network")
        return super().initialize()

    # ------------------------------------------------------------------ data loading
    def get_dataloaders(self):
        """nnU-Net's loaders and transforms; the augmentation workers get :func:`worker_seeds` when seeded."""
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        common = dict(is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
                      regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        tr_transforms = self.get_training_transforms(patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
                                                     use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
                                                     **common)
        val_transforms = self.get_validation_transforms(ds_scales, **common)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        loader = dict(oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
                      pad_sides=None, probabilistic_oversampling=self.probabilistic_oversampling)
        dl_tr = self.training_data_loader(dataset_tr, self.batch_size, initial_patch_size, patch_size, lm,
                                          transforms=tr_transforms, **loader)
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size, patch_size, patch_size, lm,
                                  transforms=val_transforms, **loader)
        n = get_allowed_n_proc_DA()
        if n == 0:
            gen_tr, gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            seed = training_seed()
            rank = int(getattr(self, "local_rank", 0))
            start = int(getattr(self, "current_epoch", 0))
            n_val = max(1, n // 2)
            seeds_tr = seeds_val = None
            if seed is not None:
                seeds_tr = worker_seeds(seed + 1000 * rank, n, start)
                seeds_val = worker_seeds(seed + 1000 * rank, n_val, start)
            pin = self.device.type == "cuda"
            gen_tr = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=n,
                                                  num_cached=max(6, n // 2), seeds=seeds_tr, pin_memory=pin,
                                                  wait_time=0.002)
            gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None, num_processes=n_val,
                                                   num_cached=max(3, n // 4), seeds=seeds_val, pin_memory=pin,
                                                   wait_time=0.002)
        _ = next(gen_tr)  # start the workers now, as nnU-Net does
        _ = next(gen_val)
        return gen_tr, gen_val

    def training_data_loader(self, *args, **kwargs):
        """The training batches' loader (nnU-Net's ``nnUNetDataLoader``); a trainer overrides this hook to sample
        patches differently (e.g. centred on the lesion, :mod:`nnunet_ext.data.sampling`)."""
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

        return nnUNetDataLoader(*args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dict(self) -> dict:
        """nnU-Net's checkpoint content (same keys, so nnU-Net's predictor and ``--c`` read it) plus the generator
        states under :data:`RNG_KEY`."""
        from torch._dynamo import OptimizedModule

        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        return {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            RNG_KEY: rng_state(),
        }

    def save_checkpoint(self, filename: str) -> None:
        """:meth:`checkpoint_dict` written to a temporary file and renamed (rank 0): a kill mid-write keeps the
        previous checkpoint, so ``--c`` always finds a whole one."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        tmp = f"{filename}.tmp{os.getpid()}"
        try:
            torch.save(self.checkpoint_dict(), tmp)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """Restore network, optimizer, grad scaler, logger and epoch from a checkpoint file or dict, as nnU-Net does;
        the generator states are restored when the first resumed epoch starts (seeded runs)."""
        from torch._dynamo import OptimizedModule

        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):  # weights_only=True (nnunet_ext.data.checkpoints), not nnU-Net's unsafe load
            checkpoint = load_checkpoint(checkpoint, map_location=self.device)
        own = self.network.module if self.is_ddp else self.network
        if isinstance(own, OptimizedModule):
            own = own._orig_mod
        keys = own.state_dict().keys()
        weights = {k[7:] if k not in keys and k.startswith("module.") else k: v
                   for k, v in checkpoint["network_weights"].items()}
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        own.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        if checkpoint.get(RNG_KEY) is not None and training_seed() is not None:
            self._pending_rng_state = checkpoint[RNG_KEY]  # restored when the first resumed epoch starts

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            for path in remove_stale_checkpoint_temps(self.output_folder):
                self.print_to_log_file(f"removed {path}, a checkpoint left half-written by a killed run")

    def on_train_epoch_start(self):
        state, self._pending_rng_state = self._pending_rng_state, None
        if state is not None:
            set_rng_state(state)
            self.print_to_log_file(f"{SEED_ENV}: generator states of the checkpoint restored (epoch "
                                   f"{self.current_epoch})")
        return super().on_train_epoch_start()


STALE_TEMP_AGE_S = 3600.0  # a temporary checkpoint this old is stale even if its process id is in use again


def remove_stale_checkpoint_temps(folder: str) -> list[str]:
    """Delete ``checkpoint_*.pth.tmp<PID>`` files in ``folder`` that a killed run left (its process is gone, or the
    file is over an hour old; a checkpoint of the paper's size is 0.5 GB). Returns the removed paths."""
    import glob
    import re
    import time

    from nnunet_ext.data.files import pid_alive

    removed = []
    for path in glob.glob(os.path.join(glob.escape(str(folder)), "checkpoint_*.pth.tmp*")):
        m = re.search(r"\.pth\.tmp(\d+)$", path)
        if m is None:
            continue
        try:
            stale = not pid_alive(int(m.group(1))) or time.time() - os.path.getmtime(path) > STALE_TEMP_AGE_S
            if stale and int(m.group(1)) != os.getpid():
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def with_env_seed(base: type) -> tuple[type, ...]:
    """The bases for a subclass of ``base`` that honours ``nnUNet_ext_seed`` (``base`` alone if it already does)."""
    return (base,) if issubclass(base, EnvSeededTrainer) else (EnvSeededTrainer, base)


__all__ = ["RNG_KEY", "SEED_ENV", "EnvSeededTrainer", "remove_stale_checkpoint_temps", "rng_state", "seed_everything",
           "set_rng_state", "training_seed", "with_env_seed", "worker_seeds"]
