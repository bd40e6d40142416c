"""nnUNet_ext_seed: two seeded CPU runs with single-process loading are identical; workers get fixed seeds."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.trainers.seeding import SEED_ENV, EnvSeededTrainer, training_seed


def make_trainer(dataset, trainer="EarlyFusionTrainer_smoke"):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.trainers.run import ensure_trainer_path

    ensure_trainer_path()
    return get_trainer_from_args(str(dataset["id"]), "3d_fullres", 0, trainer, "nnUNetPlans",
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
