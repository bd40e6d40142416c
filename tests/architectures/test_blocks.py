"""Blocks of STD-Net: temporal transformer, ConvGRU, skip-level phase fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_ext.architectures.blocks import temporal_transformer as tt
from nnunet_ext.architectures.blocks.conv_gru import ConvGRU, ConvGRUCell
from nnunet_ext.architectures.blocks.phase_fusion import PhaseWeighting, ReferencePhaseAttention
from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32, TemporalTransformer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("n", [1, 3, 6])
def test_temporal_transformer_shapes_and_attention_rows(n, norm_first):
    torch.manual_seed(0)
    t = TemporalTransformer(in_features=12, num_phases=n, dim=16, depth=2, heads=4, norm_first=norm_first).eval()
    tokens = torch.randn(5, n, 12)
    z, weights = t(tokens, return_attention=True)
    assert z.shape == (5, n + 1, 16)
    assert len(weights) == 2 and all(w.shape == (5, 4, n + 1, n + 1) and w.dtype == torch.float32 for w in weights)
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(5, 4, n + 1))
    # the fused (SDPA) path and the explicit path compute the same thing
    torch.testing.assert_close(t(tokens), z, rtol=1e-4, atol=1e-5)


def test_temporal_transformer_init_follows_timesformer():
    t = TemporalTransformer(8, 3, dim=16, depth=3, heads=2)
    assert t.blocks[0].attn.proj.weight.abs().sum() > 0
    for block in t.blocks[1:]:
        assert block.attn.proj.weight.abs().sum() == 0 and block.attn.proj.bias.abs().sum() == 0
    assert 0 < t.pos_embed.std() < 0.05 and t.pos_embed.shape == (1, 4, 16)


def test_positional_embedding_makes_phases_distinguishable():
    torch.manual_seed(0)
    t = TemporalTransformer(8, 3, dim=16, depth=1, heads=2).eval()
    tokens = torch.randn(4, 3, 8)
    cls = t(tokens)[:, 0]
    cls_perm = t(tokens[:, [2, 0, 1]])[:, 0]
    assert not torch.allclose(cls, cls_perm, atol=1e-5)


def test_sdpa_is_split_for_very_long_batches(monkeypatch):
    torch.manual_seed(0)
    attn = tt.PhaseSelfAttention(16, 2).eval()
    x = torch.randn(10, 4, 16)
    full, _ = attn(x)
    monkeypatch.setattr(tt, "_MAX_SDPA_BATCH", 3)
    torch.testing.assert_close(attn(x)[0], full)


def test_head_count_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        TemporalTransformer(8, 3, dim=10, depth=1, heads=4)


def test_layernorm_fp32_under_bf16_autocast():
    ln = LayerNormFp32(8)
    x = (torch.randn(3, 8) * 1e3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), nn.functional.layer_norm(x.float(), (8,)), atol=2e-2, rtol=2e-2)


def test_transformer_bf16_autocast_is_finite():
    t = TemporalTransformer(8, 3, dim=16, depth=2, heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = t(torch.randn(6, 3, 8) * 100)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("conv_op,spatial", [(nn.Conv3d, (2, 3, 3)), (nn.Conv2d, (4, 4))])
def test_conv_gru_shapes_order_and_bounds(conv_op, spatial):
    torch.manual_seed(0)
    gru = ConvGRU(conv_op, 5, 7, kernel_size=3)
    x = torch.randn(2, 3, 5, *spatial)
    h = gru(x)
    assert h.shape == (2, 7, *spatial) and h.abs().max() < 1  # a convex mix of tanh values starting from 0
    assert not torch.allclose(h, gru(x.flip(1)))  # the recurrence sees the phase order
    cell = gru.cell
    torch.testing.assert_close(gru(x[:, :1]), cell(x[:, 0], None))


def test_conv_gru_cell_accepts_anisotropic_kernels():
    cell = ConvGRUCell(nn.Conv3d, 4, 4, kernel_size=[1, 3, 3])
    assert cell(torch.randn(1, 4, 2, 5, 5)).shape == (1, 4, 2, 5, 5)


@pytest.mark.parametrize("fusion_cls", [PhaseWeighting, ReferencePhaseAttention])
def test_skip_fusion_starts_as_reference_phase_and_learns(fusion_cls):
    torch.manual_seed(0)
    fuse = fusion_cls(channels=6, num_phases=3, reference=1)
    feats = torch.randn(2, 3, 6, 2, 4, 4, requires_grad=True)
    out = fuse(feats)
    torch.testing.assert_close(out, feats[:, 1])
    out.square().sum().backward()
    assert all(p.grad is not None for p in fuse.parameters())
    if fusion_cls is PhaseWeighting:
        assert fuse.weight.grad.abs().sum() > 0
    else:
        assert fuse.proj.weight.grad.abs().sum() > 0


def test_phase_weighting_matches_explicit_formula():
    fuse = PhaseWeighting(channels=4, num_phases=3, reference=0)
    with torch.no_grad():
        fuse.weight.copy_(torch.randn(3, 4))
    feats = torch.randn(2, 3, 4, 5, 5)
    w = fuse.weight.view(1, 3, 4, 1, 1)
    expected = feats[:, 0] + (w * (feats - feats[:, :1])).sum(1)
    torch.testing.assert_close(fuse(feats), expected)


def test_lesion_weighted_pool_focuses_on_predicted_lesion_and_falls_back_to_mean():
    import torch

    from nnunet_ext.architectures.blocks.heads import global_average_pool, lesion_pool_channels, lesion_weighted_pool

    torch.manual_seed(0)
    feats = torch.randn(2, 5, 2, 4, 4)
    seg = torch.full((2, 3, 8, 16, 16), -20.0)
    seg[:, 0] = 20.0  # background everywhere ...
    seg[0, 2, :4, :4, :4] = 40.0  # ... except a lesion (channel 2) filling feature cell (0, 0, 0) of sample 0
    pooled = lesion_weighted_pool(feats, [seg, seg[:, :, ::2, ::2, ::2]], [2])
    floor_share = 31e-4 / (1 + 32e-4)  # the other 31 cells keep LESION_POOL_FLOOR each
    expected0 = (1 - floor_share) * feats[0, :, 0, 0, 0] + floor_share * feats[0].flatten(1)[:, 1:].mean(-1)
    torch.testing.assert_close(pooled[0], expected0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled[1], global_average_pool(feats)[1])  # no lesion: the mean
    torch.testing.assert_close(lesion_weighted_pool(feats, seg, None), global_average_pool(feats))
    seg.requires_grad_(True)
    feats.requires_grad_(True)
    lesion_weighted_pool(feats, seg, [2]).sum().backward()
    assert seg.grad is None and feats.grad is not None  # the weights are detached from the segmentation
    assert lesion_pool_channels([2], 3) == [2] and lesion_pool_channels(None, 3) is None
    assert lesion_pool_channels([5], 3) is None


def test_lesion_weighted_pool_with_a_given_mask_ignores_the_prediction():
    from nnunet_ext.architectures.blocks.heads import lesion_weighted_pool

    torch.manual_seed(0)
    feats = torch.randn(2, 5, 2, 4, 4)
    seg = torch.randn(2, 3, 8, 16, 16)  # a prediction that says something else
    mask = torch.zeros(2, 1, 8, 16, 16, dtype=torch.bool)
    mask[0, :, :4, :4, :4] = True  # the lesion fills feature cell (0, 0, 0) of sample 0; sample 1 has none
    onehot_logits = torch.cat([~mask, torch.zeros_like(mask), mask], 1).float() * 100  # the same as logits
    pooled = lesion_weighted_pool(feats, seg, [2], lesion_mask=mask)
    torch.testing.assert_close(pooled, lesion_weighted_pool(feats, onehot_logits, [2]))
    torch.testing.assert_close(pooled[1], feats[1].flatten(1).mean(-1))  # no lesion in the mask: the mean
    assert not torch.allclose(pooled, lesion_weighted_pool(feats, seg, [2]))



def test_leaky_head_keeps_a_gradient_where_a_relu_head_goes_dead():
    from nnunet_ext.architectures.blocks.heads import ClassificationHead

    torch.manual_seed(0)
    feats = torch.randn(64) * 5 + 0.01 * torch.randn(16, 64)  # nearly identical cases, as pooled features are
    grads = {}
    for act in ("relu", "leaky_relu"):
        head = ClassificationHead(64, 3, 128, dropout=0.0, activation=act)
        with torch.no_grad():
            head.mlp[0].bias.fill_(-100.0)  # every unit pushed below zero for every case
        head(feats).sum().backward()
        grads[act] = head.mlp[0].weight.grad.abs().sum().item()
    assert grads["relu"] == 0.0 and grads["leaky_relu"] > 0.0
    assert isinstance(ClassificationHead(4, 2).mlp[1], nn.LeakyReLU)
    assert isinstance(ClassificationHead(4, 2, activation="gelu").mlp[1], nn.GELU)
    with pytest.raises(ValueError, match="activation"):
        ClassificationHead(4, 2, activation="tanh")
    with pytest.raises(ValueError, match="tabular"):
        ClassificationHead(4, 2, 8, tabular_features=2)(torch.zeros(1, 4))


def test_tabular_standardize_uses_the_given_statistics_and_travels_in_the_state_dict():
    from nnunet_ext.architectures.blocks.heads import ClassificationHead
    from nnunet_ext.architectures.blocks.tabular import TabularStandardize

    norm = TabularStandardize(2)
    x = torch.tensor([[60.0, 1.0], [70.0, 3.0]])
    torch.testing.assert_close(norm(x), x)  # identity until statistics are set
    norm.set_statistics([65.0, 2.0], [5.0, 0.0])  # a constant feature (std 0) is only centred
    torch.testing.assert_close(norm(x), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="built for 2"):
        norm.set_statistics([1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        norm.set_statistics([float("nan"), 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        norm(torch.zeros(3))
    head = ClassificationHead(8, 3, tabular_features=2)
    assert {"tabular_norm.mean", "tabular_norm.std"} <= set(head.state_dict())
    head.tabular_norm.set_statistics([65.0, 2.0], [5.0, 1.0])
    other = ClassificationHead(8, 3, tabular_features=2)
    other.load_state_dict(head.state_dict())
    torch.testing.assert_close(other.tabular_norm.mean, torch.tensor([65.0, 2.0]))
    assert ClassificationHead(8, 3).tabular_norm is None
