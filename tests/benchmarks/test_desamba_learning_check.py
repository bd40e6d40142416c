"""benchmarks/desamba_learning_check.py runs end to end in its --smoke mode (the plumbing: synthetic MRI, vanilla and
DeSamba CPU plans, seeded training of the comparator and DeSamba, held-out prediction with clinical features, metrics,
JSON and table; not whether DeSamba learns, which needs the full run)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.desamba_learning_check as module

    env, threads = dict(os.environ), torch.get_num_threads()
    monkeypatch.setenv("nnUNet_def_n_proc", "1")  # one worker per nnU-Net pool (the script keeps what is set)
    yield module
    os.environ.clear()  # the script points nnU-Net's variables at its workspace and sets the seed
    os.environ.update(env)
    torch.set_num_threads(threads)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(iv) -> bool:
    return (_finite(iv["estimate"]) and 0 <= iv["estimate"] <= 1 and _finite(iv["ci_low"])
            and _finite(iv["ci_high"]) and iv["ci_low"] <= iv["ci_high"])


def test_every_ablation_has_a_trainer_on_the_check_schedules(check):
    trainers = check.learning_check_trainers()
    assert {b.__name__ for b in trainers.DESAMBA_LEARNING_CHECK_BASES} == set(check.DEFAULT_METHODS)
    for method in check.DEFAULT_METHODS:
        for schedule in (check.SCHEDULE, check.SMOKE_SCHEDULE):
            assert hasattr(trainers, f"{method}_{schedule}"), (method, schedule)
    # the STD-Net check's own list is left as it was
    assert not set(check.DEFAULT_METHODS) & {b.__name__ for b in trainers.LEARNING_CHECK_BASES}


def test_smoke_mode_writes_every_field_with_finite_values(check, tmp_path, capsys):
    out = tmp_path / "dlc"
    # one torch thread: tiny tensors, and spinning OpenMP threads on a busy 2-core machine only slow them down
    argv = ["-o", str(out), "--smoke", "--threads", "1"]
    result = check.main(argv)

    assert json.loads((out / check.RESULT_FILE).read_text(encoding="utf-8")) == result
    assert result["command"].endswith("benchmarks/desamba_learning_check.py " + shlex.join(argv))
    assert result["machine"]["cpu_count"] == os.cpu_count() and result["machine"]["platform"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", result["date"])
    config = result["config"]
    assert config["schedule"]["name"] == "lcsmoke" and config["shape"] == [16, 32, 32]
    assert (config["n_train"], config["n_test"], config["num_classes"]) == (9, 6, 3)
    assert config["tabular_features"] == ["age", "crp", "alp"] and config["baseline"] == "EarlyFusionTrainer_tabular"
    assert math.isclose(config["ce_threshold"], 0.8 * math.log(3))
    methods = list(check.SMOKE_METHODS)
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [(m, 0) for m in methods]
    for r in result["runs"]:
        assert r["trainer"] == f"{r['method']}_lcsmoke"
        assert r["plans"] == ("DeSambaPlansCPU" if r["method"].startswith("DeSamba") else "nnUNetPlans")
        assert r["train_ce_per_epoch"] and all(_finite(v) for v in r["train_ce_per_epoch"])
        assert _finite(r["ce_epoch1"]) and _finite(r["ce_last"]) and isinstance(r["ce_last_below_threshold"], bool)
        assert _interval(r["heldout_accuracy"]) and _interval(r["heldout_auc"])
        assert _finite(r["lesion_dice"]) and 0 <= r["lesion_dice"] <= 1
        assert _finite(r["probability_spread"]) and isinstance(r["collapsed"], bool)
        assert r["seconds"]["total"] > 0 and _finite(r["minutes"]) and r["heldout"]["n_cases"] == 6
        assert (Path(r["predictions"]) / "classification.csv").is_file()
        assert f"nnUNet_results{os.sep}seed_0{os.sep}" in r["model_folder"]
    desamba = Path(result["runs"][1]["model_folder"]) / "fold_0"
    assert (desamba / "tabular_statistics.json").is_file()  # trained with the clinical features
    table = capsys.readouterr().out
    assert "| method | seed | CE epoch 1 | CE last |" in table and "held-out accuracy [95% CI]" in table
    assert all(f"| {m} | 0 |" in table for m in methods)
