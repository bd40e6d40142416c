"""Every schedule of the table gives its trainer variants exactly its epochs, iterations and checkpoint interval."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.trainers.schedules import SCHEDULES, with_schedule


class _Base:
    """Stands in for an nnU-Net trainer: only the attributes a schedule sets."""

    def __init__(self, plans, configuration, fold, dataset_json, device):
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
        self.save_every = 50


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_sets_epochs_iterations_and_checkpoint_interval(name):
    sched = SCHEDULES[name]
    tr = with_schedule(_Base, name)({}, "3d_fullres", 0, {}, torch.device("cpu"))
    assert type(tr).__name__ == f"_Base_{name}"
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (
        sched.num_epochs, sched.iterations_per_epoch, sched.val_iterations_per_epoch)
    assert tr.save_every == (50 if sched.save_every is None else sched.save_every)


