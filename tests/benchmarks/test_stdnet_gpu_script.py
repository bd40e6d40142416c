"""The GPU benchmark script runs end to end in its tiny CPU mode (a sanity check of the code path, no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.stdnet_gpu as module

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; spinning OpenMP threads on a busy shared CPU only slow them down
    yield module
    torch.set_num_threads(n)


def test_tiny_cpu_mode_writes_json_lines_for_both_networks(bench, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert bench.main(["--device", "cpu", "--tiny", "--no-compile", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["record"] for r in lines] == ["config", "network", "network"]
    assert capsys.readouterr().out.count("\n") == 3  # the same lines on stdout
    config, *nets = lines
    assert config["patch"] == [16, 32, 32] and config["batch"] == 2 and config["amp_dtype"] == "bf16"
    assert config["topology"]["n_stages"] == 4
    by_name = {r["network"]: r for r in nets}
    assert by_name["stdnet"]["class"] == "STDNet" and by_name["nnunet"]["class"] == "PlainConvUNet"
    for r in nets:
        for key in ("train_step_ms", "train_tflops", "train_flops", "forward_volume_s", "planner_predicted_gb",
                    "planner_estimate_units"):
            assert r[key] > 0, key
        assert len(r["train_step_ms_all"]) == config["steps"]
        assert r["measured_peak_gb"] is None  # CUDA-only quantity
    # three encoder passes cost more than one: the estimates say so before anything is measured
    assert by_name["stdnet"]["planner_estimate_units"] > by_name["nnunet"]["planner_estimate_units"]
    assert by_name["stdnet"]["train_flops"] > by_name["nnunet"]["train_flops"]


def test_topology_follows_nnunet_planner_for_the_paper_patch(bench):
    topo = bench.nnunet_topology((64, 128, 128))
    assert topo["n_stages"] == 6 and topo["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert topo["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def test_refuses_cuda_without_a_gpu(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda"]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err


@pytest.mark.parametrize("flags, optimizer", [
    (["--optimizer", "hybrid"], "hybrid: SGD"),
    (["--fused-sgd"], "SGD(nesterov, lr=1e-2, momentum=0.99, weight_decay=3e-5, fused)"),
])
def test_optimizer_levers_are_recorded(bench, tmp_path, flags, optimizer):
    out = tmp_path / "bench.jsonl"
    assert bench.main(["--device", "cpu", "--tiny", "--no-compile", "--skip-volume", "--networks", "stdnet",
                       "--steps", "1", "--out", str(out), *flags]) == 0
    config, net = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert config["optimizer"].startswith(optimizer) and net["train_step_ms"] > 0
