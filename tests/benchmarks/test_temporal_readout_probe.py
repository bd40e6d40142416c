"""The temporal readout probe runs end to end at toy size, pools the lesion cells it claims to, and reuses its cache."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1].parent


@pytest.fixture()
def probe(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import temporal_readout_probe

    n = torch.get_num_threads()
    yield temporal_readout_probe
    torch.set_num_threads(n)


TINY = ["--n-train", "6", "--n-val", "6", "--shape", "16", "32", "32", "--base-features", "4", "--max-features", "8",
        "--encoder-iterations", "2", "--steps", "4", "--eval-every", "2", "--batch", "4", "--threads", "1",
        "--temporal-dim", "16", "--temporal-depth", "2", "--temporal-heads", "2"]


def test_every_readout_trains_and_the_cache_is_reused(probe, tmp_path):
    out, cache = tmp_path / "probe.jsonl", tmp_path / "cache"
    assert probe.main(TINY + ["--cache", str(cache), "--out", str(out)]) == 0
    config, encoder, *records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert config["readouts"] == list(probe.READOUTS)
    assert encoder["record"] == "encoder" and encoder["cases_without_lesion"] == 0
    assert len(encoder["seg_loss_first_last_25"]) == 2
    assert [(r["readout"], r["step"]) for r in records] == [(k, s) for k in probe.READOUTS for s in (2, 4)]
    for r in records:
        assert 0.0 <= r["val_auc"] <= 1.0 and r["train_ce"] > 0
    # second run: same key -> the cached features, no encoder training
    out2 = tmp_path / "probe2.jsonl"
    assert probe.main(TINY + ["--cache", str(cache), "--out", str(out2), "--readouts", "mean"]) == 0
    encoder2 = json.loads(out2.read_text(encoding="utf-8").splitlines()[1])
    assert encoder2["cached"] is True and encoder2["bottleneck"] == encoder["bottleneck"]
    first = [json.loads(line) for line in out2.read_text(encoding="utf-8").splitlines()[2:]]
    def untimed(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert untimed(first) == untimed(r for r in records if r["readout"] == "mean")  # same seed, same features


def test_readouts_pool_the_selected_cells_with_their_weights(probe):
    args = Namespace(temporal_dim=16, temporal_depth=1, temporal_heads=2)
    b, n, c = 2, 3, 4
    grid = torch.zeros(b, n, c, 2, 2, 2)
    grid[0, :, :, 1, 1, 1] = torch.arange(n * c, dtype=torch.float32).view(n, c)  # cell 7
    grid[1, :, :, 0, 0, 0] = 1.0  # cell 0
    batch = {"grid": grid, "idx": torch.tensor([[7, 0], [0, 5]]), "weight": torch.tensor([[0.75, 0.25], [1.0, 0.0]]),
             "intensity": torch.zeros(b, 6)}
    mean = probe.Readout("mean", c, n, 3, args).features(batch)
    torch.testing.assert_close(mean[0], 0.75 * grid[0, :, :, 1, 1, 1].mean(0))
    torch.testing.assert_close(mean[1], torch.ones(c))
    concat = probe.Readout("concat", c, n, 3, args).features(batch)
    torch.testing.assert_close(concat[0], 0.75 * grid[0, :, :, 1, 1, 1].flatten())
    # the transformer readouts are STD-Net's own module, configured as the variant says
    paper = probe.Readout("transformer", c, n, 3, args)
    assert type(paper.temporal).__name__ == "TemporalTransformer" and paper.temporal.dim == 16
    assert probe.Readout("transformer_d256", c, n, 3, args).temporal.dim == 256
    assert not probe.Readout("transformer_post_norm", c, n, 3, args).temporal.norm_first
    tokens = probe.Readout("transformer_tokens", c, n, 3, args)
    assert tokens.features(batch).shape == (b, n * 16)
    assert paper.features(batch).shape == (b, 16)



def test_pooled_cells_are_the_top_cells_of_the_truth_or_of_the_prediction(probe):
    torch.manual_seed(0)
    net, _ = probe.build_encoder_network((16, 32, 32), 4, 8)
    x = torch.randn(2, 3, 16, 32, 32)
    grid_shape = net._phase_features(x[:1])[-1].shape[3:]
    cz, cy, cx = (s // g for s, g in zip(x.shape[2:], grid_shape))  # voxels per bottleneck cell
    segs = torch.zeros(2, 16, 32, 32, dtype=torch.long)
    segs[0, :cz, :cy, :cx] = 2  # exactly the first bottleneck cell of case 0
    segs[1, -cz:, -cy:, -cx:] = 2  # exactly the last cell of case 1
    truth = probe.bottleneck_features(net, x, segs, top_k=3)
    assert truth["grid"].shape[:3] == (2, 3, 8)
    assert truth["idx"][0, 0] == 0 and truth["idx"][1, 0] == truth["grid"][0, 0, 0].numel() - 1
    assert truth["weight"][:, 0].min() > 0.99  # one lesion cell: (almost) all the weight
    torch.testing.assert_close(truth["weight"].sum(1), torch.ones(2))
    pred = probe.bottleneck_features(net, x, segs, top_k=3, pool_with="prediction")
    with torch.no_grad():
        prob = torch.softmax(net(x)[0], 1)[:, 2:3]
    cells = torch.nn.functional.adaptive_avg_pool3d(prob, truth["grid"].shape[3:]).flatten(1)
    assert torch.equal(pred["idx"], cells.topk(3, dim=1).indices)
    torch.testing.assert_close(pred["grid"], truth["grid"])  # same features, other cells


def test_validation_cases_can_pool_with_the_prediction_while_training_pools_with_the_truth(probe, tmp_path,
                                                                                           monkeypatch):
    calls = []
    original = probe.bottleneck_features

    def spy(net, x, segs, top_k, pool_with="truth"):
        calls.append((len(x), pool_with))
        return original(net, x, segs, top_k, pool_with)

    monkeypatch.setattr(probe, "bottleneck_features", spy)
    out = tmp_path / "mixed.jsonl"
    assert probe.main(TINY + ["--n-val", "5", "--pool-with", "truth", "--eval-pool-with", "prediction",
                              "--readouts", "mean", "--out", str(out)]) == 0
    assert calls == [(6, "truth"), (5, "prediction")]  # the 6 training cases with the truth, the 5 others not
    encoder = json.loads(out.read_text(encoding="utf-8").splitlines()[1])
    assert (encoder["pool_with"], encoder["eval_pool_with"]) == ("truth", "prediction")
    # training cells are the truth's best (all of the weight on lesion cells), validation cells need not be
    assert encoder["truth_lesion_fraction_of_pooled_cells"] > 0
    assert 0.0 <= encoder["val_truth_lesion_fraction_of_pooled_cells"] <= 1.0



@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # GradScaler skipped a step
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_trains_and_evaluates_the_readout_under_autocast(probe, tmp_path, monkeypatch, amp, dtype):
    seen = []
    forward, features = probe.Readout.forward, probe.Readout.features

    def spy(method):
        def wrapped(self, batch, **kwargs):
            seen.append((method.__name__, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return method(self, batch, **kwargs)
        return wrapped

    monkeypatch.setattr(probe.Readout, "forward", spy(forward))
    monkeypatch.setattr(probe.Readout, "features", spy(features))
    out = tmp_path / f"{amp}.jsonl"
    assert probe.main(TINY + ["--readouts", "transformer", "--amp", amp, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()[2:]]
    assert [(r["amp"], r["step"]) for r in records] == [(amp, 2), (amp, 4)]
    assert all(torch.isfinite(torch.tensor(r["train_ce"])) and 0.0 <= r["val_auc"] <= 1.0 for r in records)
    # training steps (forward) and evaluations (features) both ran under autocast with the requested dtype
    assert {name for name, *_ in seen} == {"forward", "features"}
    assert all(enabled and d == dtype for _, enabled, d in seen)


def test_early_steps_train_on_the_early_cells_then_on_the_main_ones(probe, tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "early.jsonl"
    argv = TINY + ["--cache", str(cache), "--early-pool-with", "prediction", "--early-steps", "2",
                   "--readouts", "transformer", "--out", str(out)]
    seen = []
    forward = probe.Readout.forward

    def spy(self, batch):
        if self.training:
            seen.append(batch["idx"].clone())
        return forward(self, batch)

    monkeypatch.setattr(probe.Readout, "forward", spy)
    assert probe.main(argv) == 0
    _, encoder, *records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert encoder["early_pool_with"] == "prediction" and "early_truth_lesion_fraction_of_pooled_cells" in encoder
    # one schedule over early + main steps; each evaluation says which cells the steps before it trained on
    assert [(r["step"], r["cells"]) for r in records] == [(2, "prediction"), (4, "truth"), (6, "truth")]
    # the CLS attention on itself, one mean weight per layer (2 layers here)
    assert all(len(r["cls_self_attention"]) == 2 and all(0 <= a <= 1 for a in r["cls_self_attention"])
               for r in records)
    train, _, _ = probe.prepare(probe.parse_args(argv))  # the cached features the run used
    g = torch.Generator().manual_seed(7)  # the batches of seed 0
    batches = [torch.randint(0, len(train["y"]), (4,), generator=g) for _ in range(6)]
    expected = [train["early_idx"][b] for b in batches[:2]] + [train["idx"][b] for b in batches[2:]]
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert not all(torch.equal(train["early_idx"][b], train["idx"][b]) for b in batches)  # the two pools differ


def test_early_steps_without_their_pooling_is_an_argument_error(probe, capsys):
    with pytest.raises(SystemExit):
        probe.parse_args(["--early-steps", "5"])
    assert "--early-steps needs --early-pool-with" in capsys.readouterr().err
