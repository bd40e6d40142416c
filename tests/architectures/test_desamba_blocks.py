"""Blocks of DeSamba: GRN, ConvNeXt V2 block, SAMB, SAMBlock, MambaOut's gated CNN block, branch fusion, DRLM and the
tabular encoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunet_ext.architectures.blocks.branch_fusion import MultiScaleFusion
from nnunet_ext.architectures.blocks.convnext_block import ConvNeXtV2Block
from nnunet_ext.architectures.blocks.decoupled_reconstruction import DecoupledReconstruction
from nnunet_ext.architectures.blocks.gated_cnn import GatedCNNBlock
from nnunet_ext.architectures.blocks.grn import GRN
from nnunet_ext.architectures.blocks.sam_block import SAMBlock
from nnunet_ext.architectures.blocks.spectral_modulation import (
    SpectralAdaptiveModulation,
    band_weights,
    hermitian_multiplicity,
)
from nnunet_ext.architectures.blocks.tabular_encoder import TabularEncoder

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
SPATIAL = {2: (10, 12), 3: (6, 7, 8)}
C = 8

BLOCKS = {
    "grn": lambda dims: GRN(C),
    "convnext": lambda dims: ConvNeXtV2Block(C, CONV[dims]),
    "samb": lambda dims: SpectralAdaptiveModulation(C, CONV[dims]),
    "samblock": lambda dims: SAMBlock(C, CONV[dims]),
    "samblock_nospectral": lambda dims: SAMBlock(C, CONV[dims], spectral=False),
    "gated_cnn": lambda dims: GatedCNNBlock(C, CONV[dims]),
}


def _saved_elements_per_sample(fn, inputs: list[torch.Tensor], params) -> float:
    """Float32 elements of the tensors autograd keeps for backward in ``fn(*inputs)`` (deduplicated by storage;
    parameters and inputs excluded; complex counts twice), per sample: what ``activation_elements`` models."""
    skip = {p.untyped_storage().data_ptr() for p in params} | {t.untyped_storage().data_ptr() for t in inputs}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.numel():
            kept[ptr] = max(kept.get(ptr, 0), t.untyped_storage().nbytes() // 4)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(kept.values()) / inputs[0].shape[0]


def _assert_every_parameter_has_a_gradient(module: nn.Module, loss: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    loss.backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def _perturb(module: nn.Module) -> nn.Module:
    """Move the zero-initialised scalars (GRN, SAMB's a and b) off zero, so the tests see every path."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("gamma", "beta", "a", "b") and p.ndim == 1:
                p.normal_(0.0, 0.5)
    return module


# ---------------------------------------------------------------- every block
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_shape_gradients_and_activation_count(name, dims):
    torch.manual_seed(0)
    block = _perturb(BLOCKS[name](dims))
    x = torch.randn(2, C, *SPATIAL[dims], requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    _assert_every_parameter_has_a_gradient(block, (y ** 2).mean())
    numel = math.prod(SPATIAL[dims])
    assert 0 < block.activation_elements(numel) < block.activation_elements(2 * numel)
    if name != "grn":  # GRN counts its input on purpose (see its docstring)
        measured = _saved_elements_per_sample(block, [x], list(block.parameters()))
        assert 0.9 < block.activation_elements(numel) / measured < 1.1


@pytest.mark.parametrize("dims", [2, 3])
def test_fusion_shape_gradients_activation_count_and_start_as_the_mean(dims):
    torch.manual_seed(0)
    fusion = MultiScaleFusion(C, CONV[dims])
    a, b = torch.randn(2, 2, C, *SPATIAL[dims]).unbind(0)
    torch.testing.assert_close(fusion(a, b), 0.5 * (a + b), rtol=0, atol=0)  # zero-initialised pw_out
    nn.init.normal_(fusion.pw_out.weight, std=0.1)
    y = fusion(a, b)
    assert y.shape == a.shape
    _assert_every_parameter_has_a_gradient(fusion, (y ** 2).mean())
    numel = math.prod(SPATIAL[dims])
    assert 0 < fusion.activation_elements(numel) < fusion.activation_elements(2 * numel)
    measured = _saved_elements_per_sample(fusion, [a.requires_grad_(), b.requires_grad_()],
                                          list(fusion.parameters()))
    assert 0.9 < fusion.activation_elements(numel) / measured < 1.1
    with pytest.raises(ValueError):
        fusion(a, b[:, :4])


# ---------------------------------------------------------------- GRN, ConvNeXt V2
def test_grn_starts_as_the_identity_and_follows_the_formula():
    grn = GRN(C)
    x = torch.randn(2, C, 5, 6, 7)
    assert torch.equal(grn(x), x)
    _perturb(grn)
    g = x.pow(2).sum(dim=(2, 3, 4)).sqrt()
    n = (g / (g.mean(dim=1, keepdim=True) + 1e-6))[:, :, None, None, None]
    expected = grn.gamma.view(1, -1, 1, 1, 1) * (x * n) + grn.beta.view(1, -1, 1, 1, 1) + x
    torch.testing.assert_close(grn(x), expected)
    zero = torch.zeros(1, C, 3, 4, requires_grad=True)  # norms of 0: finite gradients
    _assert_every_parameter_has_a_gradient(grn, grn(zero).sum())
    assert torch.isfinite(zero.grad).all()
    last = GRN(C, channels_last=True)
    last.load_state_dict(grn.state_dict())
    torch.testing.assert_close(last(x.movedim(1, -1)).movedim(-1, 1), grn(x))


def test_convnext_block_layout_and_kernel():
    block = ConvNeXtV2Block(C, nn.Conv3d, kernel_size=3, mlp_ratio=2.0, drop_path=0.5)
    assert block.dwconv.groups == C and block.dwconv.kernel_size == (3, 3, 3) and block.hidden == 16
    x = torch.randn(4, C, 4, 5, 6)
    block.eval()
    torch.testing.assert_close(block(x), x + block.branch(x))  # no stochastic depth at inference
    with pytest.raises(ValueError):
        ConvNeXtV2Block(C, nn.Conv2d, kernel_size=4)


# ---------------------------------------------------------------- SAMB
@pytest.mark.parametrize("spatial", [(10, 12), (7, 9), (6, 7, 8), (7, 9, 5)])
def test_samb_starts_as_the_identity(spatial):
    torch.manual_seed(0)
    samb = SpectralAdaptiveModulation(C, CONV[len(spatial)])
    x = torch.randn(2, C, *spatial)
    assert torch.equal(samb(x), x)  # a = b = 0: exactly (the spectral change is zero, x is added in space)
    assert torch.equal(samb(x.bfloat16()), x.bfloat16())
    _perturb(samb)
    assert (samb(x) - x).abs().max() > 1e-2  # a, b switch the modulation on


@pytest.mark.parametrize("spatial", [(7, 9, 5), (6, 8, 4), (7, 9)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_samb_under_autocast_keeps_the_input_dtype_and_size(spatial, dtype):
    torch.manual_seed(0)
    samb = _perturb(SpectralAdaptiveModulation(C, CONV[len(spatial)]))
    for x in (torch.randn(2, C, *spatial).to(dtype).requires_grad_(), torch.randn(2, C, *spatial, requires_grad=True)):
        with torch.autocast("cpu", dtype=dtype):
            y = samb(x)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        _assert_every_parameter_has_a_gradient(samb, y.float().square().mean())
        assert torch.isfinite(x.grad).all()


def test_samb_is_scale_invariant_up_to_the_output_scale_and_safe_on_zeros():
    torch.manual_seed(0)
    samb = _perturb(SpectralAdaptiveModulation(C, nn.Conv3d))
    x = torch.randn(2, C, 5, 6, 7)
    torch.testing.assert_close(samb(1000.0 * x), 1000.0 * samb(x), rtol=1e-4, atol=1e-3)
    zero = torch.zeros(1, C, 4, 4, 4, requires_grad=True)
    y = samb(zero)
    _assert_every_parameter_has_a_gradient(samb, y.sum())
    assert torch.isfinite(zero.grad).all() and torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("spatial", [(1,), (5,), (7, 9), (6, 8), (3, 4, 5), (1, 1, 1)])
def test_spectral_bands_partition_the_rfft_grid(spatial):
    w = band_weights(spatial, 4)
    assert w.shape == (4, *spatial[:-1], spatial[-1] // 2 + 1) and (w >= 0).all()
    torch.testing.assert_close(w.sum(0), torch.ones(w.shape[1:]))
    m = hermitian_multiplicity(spatial)
    assert float(m.expand(w.shape[1:]).sum()) == math.prod(spatial)


# ---------------------------------------------------------------- SAMBlock
def test_samblock_without_spectral_branch_has_no_frequency_parameters():
    full = SAMBlock(C, nn.Conv3d)
    plain = SAMBlock(C, nn.Conv3d, spectral=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plain) == count(ConvNeXtV2Block(C, nn.Conv3d, kernel_size=7))
    assert not [n for n, _ in plain.named_parameters() if not n.startswith("spatial_branch.")]
    assert count(full) == (count(plain) + count(full.samb) + count(full.freq_conv) + count(full.freq_block)
                           + count(full.gate) + 2)
    assert full.freq_block.dwconv.kernel_size == (3, 3, 3) and full.spatial_branch.dwconv.kernel_size == (7, 7, 7)
    assert full.freq_conv.groups == 1 and SAMBlock(C, nn.Conv3d, depthwise_frequency_conv=True).freq_conv.groups == C
    x = torch.randn(2, C, 4, 5, 6)
    torch.testing.assert_close(plain(x), 0.5 * x + 0.5 * plain.spatial_branch(x))


def test_samblock_fusion_follows_the_formula():
    torch.manual_seed(0)
    block = SAMBlock(C, nn.Conv2d)
    with torch.no_grad():
        block.alpha.fill_(0.7)
        block.beta.fill_(1.3)
    x = torch.randn(2, C, 9, 7)
    f1, f2 = block.spatial_branch(x), block.frequency_branch(x)
    theta = torch.sigmoid(block.gate(torch.cat((f1.mean(dim=(2, 3)), f2.mean(dim=(2, 3))), dim=1)))[:, :, None, None]
    torch.testing.assert_close(block(x), 0.5 * x + 0.5 * theta * (0.7 * f1 + 1.3 * f2))


def test_samblock_under_bf16_autocast_on_an_odd_3d_patch():
    block = SAMBlock(C, nn.Conv3d)
    x = torch.randn(1, C, 7, 9, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


# ---------------------------------------------------------------- gated CNN (MambaOut)
def test_gated_cnn_block_is_residual_with_a_depthwise_conv():
    torch.manual_seed(0)
    block = GatedCNNBlock(C, nn.Conv3d)
    assert block.hidden == int(8 / 3 * C) and block.split_sizes == (block.hidden, block.hidden - C, C)
    assert block.conv.groups == block.conv.in_channels == block.conv.out_channels == C
    assert block.conv.kernel_size == (7, 7, 7)
    x = torch.randn(2, C, 4, 5, 6)
    assert not torch.allclose(block(x), x)  # MambaOut's init: the last Linear is not zero
    torch.testing.assert_close(block(x), x + block.branch(x))
    with torch.no_grad():
        block.fc2.weight.zero_()
        block.fc2.bias.zero_()
    assert torch.equal(block(x), x)
    narrow = GatedCNNBlock(C, nn.Conv2d, kernel_size=3, conv_ratio=0.5)
    assert narrow.conv.groups == 4 and narrow(torch.randn(1, C, 5, 5)).shape == (1, C, 5, 5)
    with pytest.raises(ValueError):
        GatedCNNBlock(C, nn.Conv2d, expansion=1.0, conv_ratio=2.0)


# ---------------------------------------------------------------- DRLM
@pytest.mark.parametrize("num_sequences, dims", [(2, 3), (3, 2)])
@pytest.mark.parametrize("self_recon, cross_recon", [(True, True), (True, False), (False, True), (False, False)])
def test_drlm_outputs_losses_and_decoders(num_sequences, dims, self_recon, cross_recon):
    torch.manual_seed(0)
    spatial = SPATIAL[dims]
    drlm = DecoupledReconstruction(C, num_sequences, CONV[dims], hidden=6, self_recon=self_recon,
                                   cross_recon=cross_recon)
    feats = [torch.randn(2, C, *spatial, requires_grad=True) for _ in range(num_sequences)]
    fused, losses = drlm(feats)
    assert drlm.out_channels == (num_sequences + 1) * 6 and fused.shape == (2, drlm.out_channels, *spatial)
    assert set(losses) == {k for k, on in (("recon_self", self_recon), ("recon_cross", cross_recon)) if on}
    assert all(v.ndim == 0 and v.dtype == torch.float32 and v > 0 for v in losses.values())
    assert (drlm.self_decoders is not None) == self_recon and (drlm.cross_decoders is not None) == cross_recon
    _assert_every_parameter_has_a_gradient(drlm, fused.square().mean() + sum(losses.values()))
    numel = math.prod(spatial)
    assert 0 < drlm.activation_elements(numel) < drlm.activation_elements(2 * numel)
    measured = _saved_elements_per_sample(lambda *f: drlm(list(f)), feats, list(drlm.parameters()))
    assert 0.9 < drlm.activation_elements(numel) / measured < 1.1
    assert drlm(feats, with_losses=False)[1] == {}


def test_drlm_shared_encoder_is_symmetric_and_needs_two_sequences():
    drlm = DecoupledReconstruction(C, 3, nn.Conv2d)
    e = [torch.randn(1, C, 4, 4) for _ in range(3)]
    torch.testing.assert_close(drlm.shared(e, 0, 2), drlm.shared(e, 2, 0))
    with pytest.raises(ValueError, match="at least 2 sequences"):
        DecoupledReconstruction(C, 1, nn.Conv2d)
    with pytest.raises(ValueError):
        drlm([torch.randn(1, C, 4, 4)] * 2)


@pytest.mark.parametrize("num_sequences, dims", [(2, 3), (3, 2)])
def test_drlm_reconstruction_losses_decrease_when_trained(num_sequences, dims):
    torch.manual_seed(0)
    spatial = (4, 4, 4) if dims == 3 else (8, 8)
    drlm = DecoupledReconstruction(C, num_sequences, CONV[dims])
    feats = [torch.randn(2, C, *spatial) for _ in range(num_sequences)]
    optimiser = torch.optim.Adam(drlm.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        _, losses = drlm(feats)
        optimiser.zero_grad()
        (0.5 * losses["recon_self"] + 0.5 * losses["recon_cross"]).backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    for key in ("recon_self", "recon_cross"):
        assert history[-1][key] < 0.8 * history[0][key], (key, history[0][key], history[-1][key])


# ---------------------------------------------------------------- tabular encoder
def test_tabular_encoder_uses_the_training_fold_statistics():
    torch.manual_seed(0)
    encoder = TabularEncoder(3, out_features=5, hidden=7).eval()
    x = torch.tensor([[60.0, 1.0, 120.0], [45.0, 0.0, 80.0]])
    encoder.set_statistics([50.0, 0.5, 100.0], [10.0, 0.5, 20.0])
    first = encoder(x)
    assert first.shape == (2, 5) and torch.isfinite(first).all()
    assert set(encoder.state_dict()) >= {"standardize.mean", "standardize.std"}
    encoder.set_statistics([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert not torch.allclose(encoder(x), first)
    encoder.set_statistics([50.0, 0.5, 100.0], [10.0, 0.5, 20.0])
    torch.testing.assert_close(encoder(x), first)
    _assert_every_parameter_has_a_gradient(encoder.train(), encoder(x).square().mean())
    assert encoder.activation_elements() > 0
    with pytest.raises(ValueError):
        encoder.set_statistics([0.0], [1.0])
