"""The hybrid optimizer: nnU-Net's SGD for the U-Net, AdamW with warm-up for the modules nnU-Net lacks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnunet_ext.trainers.optim import (
    HybridLRScheduler,
    HybridSGDAdamW,
    auxiliary_parameters,
    hybrid_param_groups,
    make_hybrid_optimizer,
    unwrap,
)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _train(model, opt, steps=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 5, generator=g)
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize("algorithm, reference", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)),
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0.0)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=3e-4, weight_decay=1e-4)),
])
def test_each_rule_reproduces_torch_optim(algorithm, reference):
    a, b = _mlp(), _mlp()
    ref = reference(a.parameters())
    opts = {k: v for k, v in ref.defaults.items() if k in ("lr", "weight_decay", "momentum", "nesterov", "betas",
                                                           "eps")}
    ours = HybridSGDAdamW(b.parameters(), algorithm=algorithm, **opts)
    _train(a, ref)
    _train(b, ours)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("algorithm, reference", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5, fused=True)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=3e-4, weight_decay=1e-4, fused=True)),
])
def test_fused_and_foreach_paths_match_torch_fused(algorithm, reference, fused):
    """Both update paths against torch's own fused optimizer (the CPU build has the fused kernels)."""
    a, b = _mlp(), _mlp()
    ref = reference(a.parameters())
    opts = {k: v for k, v in ref.defaults.items() if k in ("lr", "weight_decay", "momentum", "nesterov", "betas",
                                                           "eps")}
    ours = HybridSGDAdamW(b.parameters(), algorithm=algorithm, fused=fused, **opts)
    _train(a, ref, steps=12)
    _train(b, ours, steps=12)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_checkpoint_moves_between_the_fused_and_foreach_paths():
    """A state written by the fused path resumes on the foreach path and vice versa, as if never interrupted."""
    def groups(m):
        return [{"params": list(m[0].parameters()), "algorithm": "sgd"},
                {"params": list(m[2].parameters()), "algorithm": "adamw", "lr": 1e-3}]

    for first, second in ((True, False), (False, True)):
        a = _mlp()
        opt = HybridSGDAdamW(groups(a), fused=first)
        _train(a, opt, steps=3)
        b = copy.deepcopy(a)
        opt_b = HybridSGDAdamW(groups(b), fused=second)
        opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
        assert all(g["fused"] is first for g in opt_b.param_groups)  # saved group options win, as in torch
        for g in opt_b.param_groups:
            g["fused"] = second
        _train(a, opt, steps=3, seed=5)
        _train(b, opt_b, steps=3, seed=5)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_path_handles_parameters_added_later():
    """A group whose parameters start at different steps (``add_param_group`` or a frozen module thawed later):
    fresh momentum buffers and per-parameter AdamW bias corrections, as on the foreach path."""
    models = [_mlp(), _mlp()]
    opts = []
    for fused, m in zip((False, True), models):
        opt = HybridSGDAdamW([{"params": [m[0].weight], "algorithm": "sgd"},
                              {"params": [m[2].weight], "algorithm": "adamw", "lr": 1e-3}], fused=fused)
        opts.append(opt)
        m[0].bias.requires_grad_(False)
        m[2].bias.requires_grad_(False)
        _train(m, opt, steps=2)
        opt.param_groups[0]["params"].append(m[0].bias)
        opt.param_groups[1]["params"].append(m[2].bias)
        m[0].bias.requires_grad_(True)
        m[2].bias.requires_grad_(True)
        _train(m, opt, steps=3, seed=7)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opts[1].state[models[1][2].bias]["step"] == 3 and opts[1].state[models[1][2].weight]["step"] == 5


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ValueError, match="algorithm"):
        HybridSGDAdamW(_mlp().parameters(), algorithm="lion")


def test_state_dict_round_trip_continues_identically():
    a = _mlp()
    groups = [{"params": list(a[0].parameters()), "algorithm": "sgd"},
              {"params": list(a[2].parameters()), "algorithm": "adamw", "lr": 1e-3}]
    opt = HybridSGDAdamW(groups)
    _train(a, opt, steps=3)
    b = copy.deepcopy(a)
    opt_b = HybridSGDAdamW([{"params": list(b[0].parameters()), "algorithm": "sgd"},
                            {"params": list(b[2].parameters()), "algorithm": "adamw", "lr": 1e-3}])
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(a, opt, steps=3, seed=5)
    _train(b, opt_b, steps=3, seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def _stdnet(**kw):
    from nnunet_ext.architectures.stdnet import STDNet

    return STDNet(3, 3, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 3,
                  strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], norm_op=nn.InstanceNorm3d,
                  norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, num_cls_classes=3, temporal_dim=16,
                  temporal_depth=1, temporal_heads=2, **kw)


@pytest.mark.parametrize("kw, aux_prefixes", [
    ({}, ("temporal.", "temporal_out.", "cls_head.")),
    ({"temporal": "convgru", "skip_fusion": "attention"}, ("temporal.", "temporal_out.", "skip_fusion.", "cls_head.")),
    ({"temporal": "mean"}, ("cls_head.",)),
])
def test_stdnet_auxiliary_modules_get_adamw_and_the_unet_sgd(kw, aux_prefixes):
    net = _stdnet(**kw)
    wrapped = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapped)
    wrapped.module = net  # stands in for DDP(net) (no process group needed to check unwrapping)
    assert unwrap(wrapped) is net
    aux = {id(p) for p in auxiliary_parameters(wrapped)}
    names = {n for n, p in net.named_parameters() if id(p) in aux}
    assert names == {n for n, _ in net.named_parameters() if n.startswith(aux_prefixes)}
    groups = hybrid_param_groups(net, {"lr": 1e-2}, {"lr": 3e-4})
    assert [g["algorithm"] for g in groups] == ["sgd", "adamw"]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert all(n.startswith(("encoder.", "decoder.")) for n, p in net.named_parameters() if id(p) not in aux)


def test_scheduler_keeps_nnunet_poly_for_sgd_and_warms_up_adamw():
    net = _stdnet()
    opt, sched = make_hybrid_optimizer(net, 1e-2, 3e-5, 3e-4, 1e-4, num_epochs=10, warmup_iterations=4)
    sgd, adamw = opt.param_groups
    assert sgd["lr"] == pytest.approx(1e-2)
    sched.step(0)
    sched.step_iteration(0)
    assert sgd["lr"] == pytest.approx(1e-2) and adamw["lr"] == pytest.approx(3e-4 / 4)
    sched.step_iteration(2)
    assert adamw["lr"] == pytest.approx(3e-4 * 3 / 4)
    sched.step(5)  # nnU-Net calls step(epoch) at the start of each epoch
    sched.step_iteration(50)
    poly = (1 - 5 / 10) ** 0.9
    assert sgd["lr"] == pytest.approx(1e-2 * poly) and adamw["lr"] == pytest.approx(3e-4 * poly)
    assert sched.get_last_lr() == [sgd["lr"], adamw["lr"]]


def test_hybrid_optimizer_trains_through_the_grad_scaler_api():
    net = _stdnet()
    opt, _ = make_hybrid_optimizer(net, 1e-2, 3e-5, 3e-4, 1e-4, num_epochs=1, warmup_iterations=1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    before = [p.detach().clone() for p in net.parameters()]
    out = net(torch.randn(1, 3, 8, 8, 8), return_heads=True)
    loss = out.seg.float().mean() + out.cls.float().sum()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    scaler.step(opt)
    scaler.update()
    changed = {n for (n, p), b in zip(net.named_parameters(), before) if not torch.equal(p, b)}
    assert any(n.startswith("cls_head.") for n in changed) and any(n.startswith("decoder.") for n in changed)


def test_scheduler_without_warmup():
    opt = HybridSGDAdamW([{"params": list(_mlp().parameters()), "algorithm": "adamw", "lr": 1e-3}])
    sched = HybridLRScheduler(opt, num_epochs=4, warmup_iterations=0)
    sched.step_iteration(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_unwrap_sees_through_torch_compile():
    net = _stdnet()
    assert unwrap(torch.compile(net)) is net  # OptimizedModule keeps the original as _orig_mod (compiled lazily)
    assert len(auxiliary_parameters(torch.compile(net))) == len(auxiliary_parameters(net)) > 0


def test_warmup_cosine_schedule_of_the_stdnet_paper():
    from nnunet_ext.trainers.optim import WarmupCosineScheduler, make_adamw_optimizer

    net = _stdnet()
    opt, sched = make_adamw_optimizer(net, 1e-4, 1e-5, total_iterations=500, warmup_iterations=20)
    assert isinstance(sched, WarmupCosineScheduler) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["algorithm"], group["weight_decay"]) == ("adamw", 1e-5)
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in net.parameters())
    sched.step_iteration(0)
    assert group["lr"] == pytest.approx(1e-4 / 20)
    sched.step_iteration(19)
    assert group["lr"] == pytest.approx(1e-4)  # peak at the end of the warm-up
    sched.step_iteration(20 + 240)  # half-way through the cosine
    assert group["lr"] == pytest.approx(0.5e-4)
    sched.step(7)  # nnU-Net's per-epoch call does not change the rate
    assert group["lr"] == pytest.approx(0.5e-4)
    sched.step_iteration(499)
    assert group["lr"] < 1e-8
