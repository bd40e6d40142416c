"""nnUNet_ext_seed: two seeded CPU runs with single-process loading are identical; workers get fixed seeds."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.trainers.seeding import (
    RNG_KEY,
    SEED_ENV,
    EnvSeededTrainer,
    rng_state,
    set_rng_state,
    training_seed,
    worker_seeds,
)


def make_trainer(dataset, trainer="EarlyFusionTrainer_smoke", fold=0):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    return get_trainer_from_args(str(dataset["id"]), "3d_fullres", fold, trainer, "nnUNetPlans",
                                 device=torch.device("cpu"))


def first_step(dataset, trainer="EarlyFusionTrainer_smoke"):
    tr = make_trainer(dataset, trainer)
    tr.initialize()
    weights = [p.detach().clone() for p in tr.network.parameters()]
    dl_tr, _ = tr.get_dataloaders()
    batch = next(dl_tr)
    data = batch["data"].clone()
    out = tr.train_step(batch)
    return tr, weights, batch["keys"], data, out


@pytest.mark.parametrize("trainer", ["EarlyFusionTrainer_smoke", "nnUNetTrainer_smoke"])
def test_seeded_runs_are_identical(tiny_multiphase, monkeypatch, trainer):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(SEED_ENV, "7")
    tr_a, w_a, keys_a, data_a, out_a = first_step(tiny_multiphase, trainer)
    tr_b, w_b, keys_b, data_b, out_b = first_step(tiny_multiphase, trainer)
    assert isinstance(tr_a, EnvSeededTrainer)
    assert all(torch.equal(a, b) for a, b in zip(w_a, w_b))  # same initial weights
    assert list(keys_a) == list(keys_b) and torch.equal(data_a, data_b)  # same patches after augmentation
    assert out_a["loss"] == out_b["loss"]
    assert all(torch.equal(a, b) for a, b in zip(tr_a.network.parameters(), tr_b.network.parameters()))


def test_unseeded_runs_keep_nnunets_behaviour(tiny_multiphase, monkeypatch):
    monkeypatch.delenv(SEED_ENV, raising=False)
    weights = []
    for _ in range(2):
        tr = make_trainer(tiny_multiphase)
        tr.initialize()
        weights.append([p.detach().clone() for p in tr.network.parameters()])
    assert not all(torch.equal(a, b) for a, b in zip(*weights))


def test_augmentation_workers_get_fixed_seeds(tiny_multiphase, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    monkeypatch.setenv(SEED_ENV, "40")
    tr = make_trainer(tiny_multiphase)
    tr.initialize()
    loaders = tr.get_dataloaders()
    try:
        assert [type(dl).__name__ for dl in loaders] == ["NonDetMultiThreadedAugmenter"] * 2
        assert loaders[0].seeds == [41, 42]
        assert loaders[1].seeds == [41]
    finally:
        for dl in loaders:
            dl._finish()


@pytest.mark.parametrize("value, message", [("abc", "is not an integer"), ("-1", "out of range"),
                                            (str(2 ** 32), "out of range")])
def test_bad_seed_values_fail_with_the_fix(monkeypatch, value, message):
    monkeypatch.setenv(SEED_ENV, value)
    with pytest.raises(RuntimeError, match=message) as e:
        training_seed()
    assert "Fix:" in str(e.value)


def test_unset_or_empty_means_unseeded(monkeypatch):
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert training_seed() is None
    monkeypatch.setenv(SEED_ENV, " ")
    assert training_seed() is None
    monkeypatch.setenv(SEED_ENV, "12")
    assert training_seed() == 12


def test_generator_states_round_trip_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # a cached Gaussian is part of NumPy's state
    path = tmp_path / "rng.pt"
    torch.save({RNG_KEY: rng_state()}, path)
    expected = (random.random(), np.random.randn(), torch.rand(1))
    set_rng_state(torch.load(path, weights_only=True)[RNG_KEY])
    assert (random.random(), np.random.randn(), torch.rand(1)) == expected


@pytest.mark.parametrize("trainer", ["EarlyFusionTrainer_smoke3", "nnUNetTrainer_smoke3"])
def test_killed_and_resumed_seeded_run_ends_like_an_uninterrupted_one(tiny_multiphase, monkeypatch, trainer):
    """3 epochs in one go, against 2 epochs, a crash at the start of the third, and ``--c`` (load_checkpoint of
    checkpoint_latest + run_training, what nnU-Net's run_training does): bitwise the same final weights."""
    import os
    import shutil

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(SEED_ENV, "11")

    def fresh():
        tr = make_trainer(tiny_multiphase, trainer, fold=4)
        shutil.rmtree(tr.output_folder, ignore_errors=True)
        os.makedirs(tr.output_folder)  # its log file goes there
        tr.save_every = 1  # nnU-Net's own trainer checkpoints every 50 epochs
        return tr

    straight = fresh()
    straight.run_training()
    expected = {k: v.clone() for k, v in straight.network.state_dict().items()}

    killed = fresh()
    original = type(killed).on_train_epoch_start

    def crash_at_epoch_2(self):
        if self.current_epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(self)

    monkeypatch.setattr(type(killed), "on_train_epoch_start", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        killed.run_training()
    monkeypatch.undo()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(SEED_ENV, "11")
    latest = os.path.join(killed.output_folder, "checkpoint_latest.pth")
    assert torch.load(latest, weights_only=False)["current_epoch"] == 2
    assert RNG_KEY in torch.load(latest, weights_only=False)

    resumed = make_trainer(tiny_multiphase, trainer, fold=4)
    resumed.load_checkpoint(latest)
    resumed.run_training()
    got = resumed.network.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    folder = resumed.output_folder
    log = "".join(open(os.path.join(folder, n), encoding="utf-8").read()
                  for n in sorted(os.listdir(folder)) if n.startswith("training_log"))
    assert "generator states of the checkpoint restored (epoch 2)" in log


def test_resumed_runs_give_workers_new_reproducible_seeds():
    assert worker_seeds(40, 2) == [41, 42]  # a fresh run: unchanged
    resumed = worker_seeds(40, 2, start_epoch=5)
    assert resumed == worker_seeds(40, 2, start_epoch=5) and len(set(resumed)) == 2
    assert set(resumed).isdisjoint([41, 42]) and resumed != worker_seeds(40, 2, start_epoch=6)


def test_progress_bar_schedules_keep_the_seeding_hooks_in_the_chain():
    """``<Trainer>_demo`` / ``_cpu240`` add a tqdm bar around the epoch hooks; they must call on along the MRO so that
    the seeding mixin (restore at the first resumed epoch) still runs for the vanilla references."""
    import random

    from nnunet_ext.trainers.schedules import with_schedule

    calls = []

    class Base:
        def __init__(self, plans, configuration, fold, dataset_json, device):
            self.local_rank, self.num_iterations_per_epoch, self.current_epoch = 0, 1, 3

        def on_train_epoch_start(self):
            calls.append("base")

        def print_to_log_file(self, *args):
            calls.append(" ".join(map(str, args)))

    cls = with_schedule(Base, "demo")
    assert cls.__mro__[1] is EnvSeededTrainer
    tr = cls({}, "3d_fullres", 0, {}, torch.device("cpu"))
    random.seed(5)
    tr._pending_rng_state = rng_state()
    expected = random.random()
    random.seed(6)
    tr.on_train_epoch_start()
    tr._bar.close()
    assert random.random() == expected
    assert calls[-1] == "base" and "restored (epoch 3)" in calls[0]
