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
        assert r["temporal_grad_norm_cls"] > 0  # the class loss reaches the Transformer blocks


def test_truth_pooling_and_detached_reference_change_only_what_they_say(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import head_optimizer_diagnostic as diag

    from nnunet_ext.architectures.blocks.heads import lesion_weighted_pool

    torch.manual_seed(0)
    net, strides = diag.build_network((16, 32, 32), 4, 8)
    net.eval()  # no dropout: outputs comparable
    x = torch.randn(2, 3, 16, 32, 32)
    seg = torch.zeros(2, 1, 16, 32, 32, dtype=torch.long)
    seg[:, :, 4:12, 8:24, 8:24] = 1
    seg[0, :, 6:10, 10:14, 10:14] = 2
    seg[1, :, 6:10, 18:22, 18:22] = 2
    with torch.no_grad():
        plain = diag.training_forward(net, x, seg, "prediction")
        truth = diag.training_forward(net, x, seg, "truth")
        ctx, cls_feat, _ = net._temporal_context(net._phase_features(x)[-1])
        onehot_logits = torch.nn.functional.one_hot(seg[:, 0], 3).movedim(-1, 1).float() * 100
        expected = net.cls_head(lesion_weighted_pool(cls_feat, onehot_logits, [2]))
    for a, b in zip(plain["seg"], truth["seg"]):
        torch.testing.assert_close(a, b)  # segmentation untouched
    torch.testing.assert_close(truth["cls"], expected)
    assert not torch.allclose(plain["cls"], truth["cls"])
    # detached reference: a segmentation-only loss gives the Transformer no gradient, temporal_out still learns
    net.train()
    diag.detach_reference(net)
    out = net(x, return_heads=True)
    diag.nnunet_loss(len(strides) - 1)(out["seg"], diag.ds_targets(seg, strides)).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.temporal.parameters())
    assert net.temporal_out.weight.grad.abs().sum() > 0


def test_gradient_split_separates_the_two_losses_on_the_transformer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import head_optimizer_diagnostic as diag

    torch.manual_seed(0)
    net, strides = diag.build_network((16, 32, 32), 4, 8)
    x = torch.randn(2, 3, 16, 32, 32)
    seg = torch.zeros(2, 1, 16, 32, 32, dtype=torch.long)
    seg[:, :, 4:12, 8:24, 8:24] = 1
    seg[:, :, 6:10, 10:14, 10:14] = 2

    def losses():
        out = diag.training_forward(net, x, seg, "truth")
        l_seg = diag.nnunet_loss(len(strides) - 1)(out["seg"], diag.ds_targets(seg, strides))
        return l_seg, torch.nn.functional.cross_entropy(out["cls"], torch.tensor([0, 1]))

    # zero-initialised output projection: at the start no segmentation gradient reaches the Transformer
    split = diag.gradient_split(net, *losses())
    assert split["temporal_grad_norm_seg"] == 0 and split["temporal_grad_norm_cls"] > 0
    assert split["temporal_grad_ratio_cls_to_seg"] is None
    torch.nn.init.normal_(net.temporal_out.weight, std=0.1)
    l_seg, l_cls = losses()
    split = diag.gradient_split(net, l_seg, l_cls)
    assert split["temporal_grad_norm_seg"] > 0
    assert split["temporal_grad_ratio_cls_to_seg"] == split["temporal_grad_norm_cls"] / split["temporal_grad_norm_seg"]
    blocks = list(net.temporal.blocks.parameters())
    expected = torch.autograd.grad(l_seg, blocks, allow_unused=True)
    norm = sum(float(g.pow(2).sum()) for g in expected if g is not None) ** 0.5
    assert abs(split["temporal_grad_norm_seg"] - norm) < 1e-6 * max(norm, 1.0)
