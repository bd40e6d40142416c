"""benchmarks/stdnet_learning_check.py runs end to end in its --smoke mode (the plumbing: data, plans, the paper
protocol's pre-training, seeded training, held-out prediction and metrics, JSON and table; not whether the head
learns, which needs the full run)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.stdnet_learning_check as module

    env, threads = dict(os.environ), torch.get_num_threads()
    monkeypatch.setenv("nnUNet_def_n_proc", "1")  # one worker per nnU-Net pool (the script keeps what is set)
    yield module
    os.environ.clear()  # the script points nnU-Net's variables at its workspace and sets the seed
    os.environ.update(env)
    torch.set_num_threads(threads)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_smoke_mode_writes_every_field_with_finite_values(check, tmp_path, capsys):
    methods = list(check.SMOKE_METHODS)
    missing = check.pretraining_api_missing()
    if missing:  # the paper protocol's pre-training needs package functions this checkout lacks
        warnings.warn(f"STDNetTrainer_paperProtocol left out of the smoke check: missing {missing}", stacklevel=1)
        methods = [m for m in methods if not check.needs_pretraining(m)]
    out = tmp_path / "lc"
    # one torch thread: tiny tensors, and spinning OpenMP threads on a busy 2-core machine only slow them down
    argv = ["-o", str(out), "--smoke", "--threads", "1", "--methods", *methods]
    result = check.main(argv)

    assert json.loads((out / check.RESULT_FILE).read_text(encoding="utf-8")) == result
    assert result["command"].endswith("benchmarks/stdnet_learning_check.py " + shlex.join(argv))
    assert result["machine"]["cpu_count"] == os.cpu_count() and result["machine"]["platform"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", result["date"])
    config = result["config"]
    assert config["schedule"]["name"] == "lcsmoke" and config["shape"] == [16, 32, 32]
    assert (config["n_train"], config["n_test"], config["num_classes"]) == (9, 6, 3)
    assert math.isclose(config["ce_threshold"], 0.8 * math.log(3))
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [(m, 0) for m in methods]
    for r in result["runs"]:
        assert r["trainer"] == f"{r['method']}_lcsmoke"
        assert r["plans"] == ("nnUNetPlans" if r["method"].startswith("EarlyFusion") else "STDNetPlansCPU")
        assert r["train_ce_per_epoch"] and all(_finite(v) for v in r["train_ce_per_epoch"])
        assert _finite(r["ce_epoch1"]) and _finite(r["ce_last"]) and isinstance(r["ce_last_below_threshold"], bool)
        auc = r["heldout_auc"]
        assert _finite(auc["estimate"]) and 0 <= auc["estimate"] <= 1
        assert _finite(auc["ci_low"]) and _finite(auc["ci_high"]) and auc["ci_low"] <= auc["ci_high"]
        assert _finite(r["lesion_dice"]) and 0 <= r["lesion_dice"] <= 1
        assert _finite(r["probability_spread"]) and isinstance(r["collapsed"], bool)
        assert r["seconds"]["total"] > 0 and r["heldout"]["n_cases"] == 6
        assert (Path(r["predictions"]) / "classification.csv").is_file()
        assert f"nnUNet_results{os.sep}seed_0{os.sep}" in r["model_folder"]
        if check.needs_pretraining(r["method"]):
            pre = r["pretraining"]
            assert pre["trainer"] == "nnUNetTrainer_lcsmoke" and pre["plans"] == "STDNetPretrainPlans"
            assert Path(pre["expanded"]).is_file() and pre["expand_report"]["copied_encoder"] > 0
        else:
            assert r["pretraining"] is None
    table = capsys.readouterr().out
    assert "| method | seed | CE epoch 1 | CE last |" in table
    assert all(f"| {m} | 0 |" in table for m in methods)
