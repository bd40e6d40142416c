"""The head-collapse diagnostic runs end to end at toy size and records what RESULTS.md quotes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1].parent


def test_diagnostic_trains_both_optimizers_from_the_same_start(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import head_optimizer_diagnostic as diag

    n = torch.get_num_threads()
    out = tmp_path / "diag.jsonl"
    try:
        assert diag.main(["--n-train", "3", "--n-val", "3", "--shape", "16", "32", "32", "--iterations", "2",
                          "--log-every", "2", "--iterations-per-epoch", "1", "--epochs", "2", "--base-features", "4",
                          "--max-features", "8", "--threads", "1", "--head-activation", "relu",
                          "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    config, *records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert config["head_activation"] == "relu"
    assert [(r["optimizer"], r["iteration"]) for r in records] == [("nnunet_sgd", 1), ("nnunet_sgd", 2),
                                                                     ("hybrid", 1), ("hybrid", 2)]
    first = {r["optimizer"]: r for r in records if r["iteration"] == 1}
    # same initial weights and first batch: the first probes differ only by one optimizer step
    assert first["nnunet_sgd"]["cls_loss"] == first["hybrid"]["cls_loss"]
    for r in records:
        assert 0.0 <= r["train_dead_hidden"] <= 1.0 and r["train_logit_std"] >= 0.0
        assert len(r["train_cls_self_attention"]) == 6  # the paper's 6 layers
