"""The DeSamba network: every preset trains (forward + backward), parameters against the paper, each ablation removes
only its component, the auxiliary losses, the case inputs and the memory estimate. The contract itself is held by
``test_contract.py`` (DeSamba registers as ``"desamba"``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_ext.architectures.desamba import (
    ELEMENTS_PER_UNIT,
    PAPER_PARAMS,
    PRESETS,
    TINY_ARCH_KWARGS,
    VARIANTS,
    DeSamba,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def topology(dim: int, n_stages: int) -> dict:
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return {"n_stages": n_stages, "features_per_stage": [32] * n_stages, "conv_op": conv,
            "kernel_sizes": [[3] * dim] * n_stages, "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
            "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True}}


def build(dim: int = 3, n_stages: int = 3, sequences: int = 3, seed: int = 0, **kwargs) -> DeSamba:
    kwargs = {**TINY_ARCH_KWARGS, "num_cls_classes": 3, "num_tabular": 2, **kwargs}
    torch.manual_seed(seed)
    net = DeSamba(sequences, 2, **topology(dim, n_stages), deep_supervision=True, cls_pool_channels=[1], **kwargs)
    net.apply(net.initialize)
    return net


def run(net: DeSamba, x: torch.Tensor):
    tab = torch.randn(x.shape[0], 2) if net.consumed_case_inputs() else None
    return net(x, return_heads=True, tabular=tab)


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, dim, n_stages, sequences, patch", [
    ("tiny", 3, 5, 3, (16, 32, 32)),
    ("small", 3, 5, 2, (16, 16, 16)),
    ("base", 2, 5, 2, (32, 32)),  # the 3D base preset (437M parameters) is counted on the meta device below
])
def test_every_preset_trains_at_a_tiny_size(preset, dim, n_stages, sequences, patch):
    torch.manual_seed(0)
    net = DeSamba(sequences, 2, **topology(dim, n_stages), preset=preset, deep_supervision=True, num_cls_classes=3,
                  num_tabular=2, cls_pool_channels=[1])
    net.apply(net.initialize)
    out = run(net, torch.randn(2, sequences, *patch))
    assert out.seg[0].shape == (2, 2, *patch) and len(out.seg) == n_stages - 1
    assert out.cls.shape == (2, 3) and set(out.aux_losses) == {"recon_self", "recon_cross"}
    loss = sum(s.mean() for s in out.seg) + sum(out.aux_losses.values()) + out.cls.logsumexp(1).mean()
    loss.backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def _meta(preset: str, **kwargs) -> DeSamba:
    with torch.device("meta"):
        return DeSamba(3, 2, **topology(3, 6), preset=preset, num_cls_classes=3, num_tabular=3, cls_pool_channels=[1],
                       **kwargs)


def test_parameters_against_the_paper():
    """Three sequences, the paper's 3D setting: base about the paper's 433.82M, small at most a quarter of it with
    every component (SAMB, MambaOut, fusion, DRLM with both decoders, tabular encoder, classifier)."""
    counts = {p: _meta(p).parameter_count() for p in PRESETS}
    assert abs(counts["base"] / PAPER_PARAMS - 1) < 0.05
    assert counts["small"] <= PAPER_PARAMS / 4
    assert counts["tiny"] < counts["small"] < counts["base"]
    small = _meta("small")
    names = [n for n, _ in small.named_parameters()]
    for part in (".samb.", ".mamba_stages.", ".fusions.", "drlm.self_decoders.", "drlm.cross_decoders.",
                 "tabular_encoder.", "cls_head."):
        assert any(part in n for n in names), part
    assert [len(stage) for stage in _meta("base").encoders[0].sam_stages] == [3, 4, 6, 3]


# ---------------------------------------------------------------- ablations
REMOVED = {"noDRLM": lambda k: k.startswith("drlm."),
           "noSpectral": lambda k: k.startswith("encoders.") and any(
               f".{p}" in k for p in ("samb.", "freq_conv.", "freq_block.", "gate.", "alpha", "beta")),
           "noMambaOut": lambda k: k.startswith("encoders.") and any(
               f".{p}." in k for p in ("mamba_down", "mamba_stages", "fusions")),
           "noTabular": lambda k: k.startswith("tabular_encoder."),
           "noSelfRecon": lambda k: k.startswith("drlm.self_decoders."),
           "noCrossRecon": lambda k: k.startswith("drlm.cross_decoders.")}
HEAD_INPUT = "cls_head.mlp.0.weight"  # the classifier's input width follows the representation


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_ablation_removes_only_its_component(variant):
    full, ablated = build().state_dict(), build(**VARIANTS[variant]).state_dict()
    removed = set(full) - set(ablated)
    assert removed and all(REMOVED[variant](k) for k in removed)
    assert set(ablated) <= set(full)
    assert [k for k in full if not REMOVED[variant](k) and k not in ablated] == []
    changed = [k for k in ablated if ablated[k].shape != full[k].shape]
    assert changed == ([HEAD_INPUT] if variant in ("noDRLM", "noTabular") else [])


@pytest.mark.parametrize("variant, losses", [(None, {"recon_self", "recon_cross"}), ("noDRLM", set()),
                                             ("noSelfRecon", {"recon_cross"}), ("noCrossRecon", {"recon_self"}),
                                             ("noSpectral", {"recon_self", "recon_cross"}),
                                             ("noMambaOut", {"recon_self", "recon_cross"}),
                                             ("noTabular", {"recon_self", "recon_cross"})])
def test_auxiliary_losses_present_as_expected(variant, losses):
    net = build(**(VARIANTS[variant] if variant else {})).eval()
    x = torch.randn(2, 3, 16, 32, 32)
    out = run(net, x)
    assert set(out.aux_losses) == losses
    assert all(v.ndim == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in out.aux_losses.values())
    with torch.no_grad():  # forward(x) is the heads' segmentation, without the DRLM or the classifier
        assert all(torch.equal(a, b) for a, b in zip(net(x), out.seg))


def test_single_sequence_has_no_drlm_and_tabular_is_consumed_only_when_built():
    one = build(sequences=1)
    assert one.drlm is None and run(one, torch.randn(2, 1, 16, 32, 32)).aux_losses == {}
    assert build().consumed_case_inputs() == ("tabular",)
    assert build(use_tabular=False).consumed_case_inputs() == ()
    assert build(num_tabular=0).consumed_case_inputs() == ()
    with pytest.raises(ValueError, match="tabular"):
        build()(torch.randn(2, 3, 16, 32, 32), return_heads=True)


def test_drlm_losses_decrease_on_a_fixed_batch():
    """The DRLM learns to reconstruct fixed sequence features (the encoders' output for one batch)."""
    net = build()
    with torch.no_grad():
        feats = [f[-1] for f in net.sequence_features(torch.randn(2, 3, 16, 32, 32))]
    opt = torch.optim.AdamW(net.drlm.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        _, losses = net.drlm(feats)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    for name in ("recon_self", "recon_cross"):
        assert history[-1][name] < 0.75 * history[0][name], name


def test_heads_are_finite_under_bf16_autocast():
    """FFTs, LayerNorm and GRN statistics run in float32 inside the blocks; the network runs under autocast."""
    net = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(net, torch.randn(2, 3, 16, 32, 32))
    assert all(torch.isfinite(s.float()).all() for s in out.seg) and torch.isfinite(out.cls.float()).all()
    assert all(torch.isfinite(v) for v in out.aux_losses.values())


# ---------------------------------------------------------------- memory estimate
def _saved_elements_per_sample(net: DeSamba, x: torch.Tensor) -> float:
    """Float32 elements autograd keeps for backward in one training forward with heads (deduplicated by storage;
    parameters and the input excluded; complex counts twice), per sample."""
    skip = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.numel():
            kept[ptr] = max(kept.get(ptr, 0), t.untyped_storage().nbytes() // 4)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(net, x)
    return sum(kept.values()) / x.shape[0]


def test_memory_estimate_tracks_what_autograd_keeps():
    net = build(n_stages=4)
    patch = (16, 32, 32)
    units = net.compute_conv_feature_map_size(patch)
    measured = _saved_elements_per_sample(net, torch.randn(2, 3, *patch))
    # nnU-Net's unit is about ELEMENTS_PER_UNIT kept elements per counted one
    assert 0.8 < units * ELEMENTS_PER_UNIT / measured < 1.25  # measured: 1.02
    assert net.compute_conv_feature_map_size((32, 64, 64)) > 6 * units
    assert build(n_stages=4, mambaout=False).compute_conv_feature_map_size(patch) < units
    assert build(n_stages=4, drlm=False).compute_conv_feature_map_size(patch) < units
    sizes = [_meta(p).compute_conv_feature_map_size((64, 64, 64)) for p in ("tiny", "small", "base")]
    assert sizes == sorted(sizes)
