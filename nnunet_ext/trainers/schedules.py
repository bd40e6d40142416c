"""Training-length variants generated from a schedule table instead of hand-written copies.

``<Trainer>_<schedule>`` changes nothing but the number of epochs / iterations (and, for the CPU smoke schedules,
turns test-time mirroring off so validation stays fast). The trainer name, and thus the results folder, states the
schedule, so a run is reproducible from its folder name alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnunet_ext.trainers.seeding import with_env_seed


@dataclass(frozen=True)
class Schedule:
    num_epochs: int
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    mirroring: bool = True  # test-time mirroring in the final validation and in inference
    progress_bar: bool = False  # a tqdm bar over each epoch's iterations (nnU-Net itself prints per epoch only)
    save_every: int | None = None  # checkpoint interval in epochs (None: the trainer's own; multi-task trainers: 1)


SCHEDULES: dict[str, Schedule] = {
    "smoke": Schedule(1, 2, 1, mirroring=False),       # CI: a couple of steps, proves the plumbing
    "smoke3": Schedule(3, 4, 1, mirroring=False),      # CI: three short epochs (kill-and-resume tests)
    "demo": Schedule(30, 20, 3, mirroring=False, progress_bar=True),  # `make demo`: 600 iterations, 2-core CPU
    "cpu240": Schedule(12, 20, 5, mirroring=False, progress_bar=True),  # CPU comparisons: 240 iterations
    # GPU comparisons: 2500 iterations; checkpoints every 10 epochs (paper-size STD-Net checkpoints are ~0.5 GB)
    "gpu2500": Schedule(50, 50, 5, save_every=10),
    "250epochs": Schedule(250),  # a quarter of nnU-Net's 1000 epochs (nnU-Net's own nnUNetTrainer_250epochs exists)
}


def with_schedule(base: type, schedule_name: str, schedule: Schedule | None = None) -> type:
    """Subclass ``base`` as ``<base>_<schedule_name>`` with the epochs and iterations of ``schedule`` (default: the
    table's entry of that name; a script may pass its own, e.g. a benchmark's schedule)."""
    sched = schedule if schedule is not None else SCHEDULES[schedule_name]
    made: list[type] = []  # the class, once made (the methods below continue its MRO with super)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super(made[0], self).__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = sched.num_epochs
        self.num_iterations_per_epoch = sched.iterations_per_epoch
        self.num_val_iterations_per_epoch = sched.val_iterations_per_epoch
        if sched.save_every is not None:
            self.save_every = sched.save_every

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super(made[0], self).configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not sched.mirroring:
            self.inference_allowed_mirroring_axes = None
        return out

    name = f"{base.__name__}_{schedule_name}"
    namespace = {"__init__": __init__, "__module__": "nnunet_ext.trainers", "__qualname__": name,
                 "configure_rotation_dummyDA_mirroring_and_inital_patch_size":
                     configure_rotation_dummyDA_mirroring_and_inital_patch_size,
                 "__doc__": f"{base.__name__} with schedule {schedule_name!r}: {sched}."}
    if sched.progress_bar:
        namespace.update(_progress_bar_hooks(made))
    made.append(type(name, with_env_seed(base), namespace))
    return made[0]


def _progress_bar_hooks(made: list[type]) -> dict:
    """A tqdm bar (on stderr, rank 0) over the training iterations of each epoch. ``made[0]``: the class these hooks
    end up in (its MRO continues the chain, so mixins such as :class:`EnvSeededTrainer` still see every call)."""
    from tqdm import tqdm

    def on_train_epoch_start(self):
        super(made[0], self).on_train_epoch_start()
        if self.local_rank == 0:
            self._bar = tqdm(total=self.num_iterations_per_epoch, leave=False, dynamic_ncols=True,
                             desc=f"{self.__class__.__name__} epoch {self.current_epoch + 1}/{self.num_epochs}")

    def train_step(self, batch):
        out = super(made[0], self).train_step(batch)
        if getattr(self, "_bar", None) is not None:
            self._bar.update()
        return out

    def on_train_epoch_end(self, train_outputs):
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
            self._bar = None
        super(made[0], self).on_train_epoch_end(train_outputs)

    return {"on_train_epoch_start": on_train_epoch_start, "train_step": train_step,
            "on_train_epoch_end": on_train_epoch_end}


def schedule_variants(*bases: type, schedules=None) -> dict[str, type]:
    """The schedule variants of ``bases`` (all :data:`SCHEDULES`, or the names in ``schedules``) by class name, for a
    module's globals()."""
    return {f"{b.__name__}_{s}": with_schedule(b, s) for b in bases for s in (schedules or SCHEDULES)}
