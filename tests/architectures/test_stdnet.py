"""STD-Net: the network contract, ablation forms, interpretability, numerics and the memory estimate."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from nnunet_ext.architectures.contract import HeadsOutput
from nnunet_ext.architectures.stdnet import STDNet

pytestmark = pytest.mark.usefixtures("single_torch_thread")


PATCH = (4, 8, 8)
TINY_TOPOLOGY = dict(n_stages=3, features_per_stage=(4, 8, 16), conv_op=nn.Conv3d, kernel_sizes=3,
                     strides=(1, 2, (1, 2, 2)), n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
                     norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
TINY_TEMPORAL = dict(temporal_dim=16, temporal_depth=2, temporal_heads=2)
BOTTLENECK = (2, 2, 2)  # PATCH after strides (1, 2, (1, 2, 2))


def make(n: int = 3, temporal: str = "transformer", share: bool = True, ds: bool = True, encoder: str = "plain",
         seed: int = 0, **kw) -> STDNet:
    torch.manual_seed(seed)
    blocks = {"n_conv_per_stage": 1} if encoder == "plain" else {"n_blocks_per_stage": (1, 1, 1)}
    net = STDNet(n, 3, **TINY_TOPOLOGY, **blocks, deep_supervision=ds, encoder=encoder, num_cls_classes=3,
                 temporal=temporal, share_weights=share, **{**TINY_TEMPORAL, **kw})
    net.apply(net.initialize)
    return net


MATRIX = list(itertools.product(["transformer", "mean", "convgru"], [True, False], [1, 3, 6], [True, False],
                                ["plain", "residual"]))


@pytest.mark.parametrize("temporal,share,n,ds,encoder", MATRIX,
                         ids=[f"{t}-{'shared' if s else 'unshared'}-N{n}-{'ds' if d else 'nods'}-{e}"
                              for t, s, n, d, e in MATRIX])
def test_contract_shapes_and_gradients(temporal, share, n, ds, encoder):
    net = make(n, temporal, share, ds, encoder)
    x = torch.randn(2, n, *PATCH)
    with torch.no_grad():
        seg_only = net(x)
    if ds:  # deep supervision: list, highest resolution first
        assert isinstance(seg_only, list) and [tuple(s.shape) for s in seg_only] == [(2, 3, 4, 8, 8),
                                                                                     (2, 3, 2, 4, 4)]
    else:
        assert isinstance(seg_only, torch.Tensor) and seg_only.shape == (2, 3, *PATCH)

    out = net(x, return_heads=True)
    assert isinstance(out, HeadsOutput) and out.aux_losses == {}
    assert out.cls.shape == (2, 3)
    seg = out.seg if ds else [out.seg]
    (sum(s.float().mean() for s in seg) + out.cls.float().square().mean()).backward()
    # every parameter takes part in the return_heads pass (DDP without find_unused_parameters); nnU-Net's decoder
    # only uses its last segmentation layer without deep supervision
    unused = {f"decoder.seg_layers.{i}" for i in range(len(net.decoder.seg_layers) - 1)} if not ds else set()
    missing = [name for name, p in net.named_parameters()
               if p.grad is None and not any(name.startswith(u + ".") for u in unused)]
    assert not missing, missing


@pytest.mark.parametrize("n", [1, 3, 6])
def test_attention_weights_shape_and_rows(n):
    net = make(n).eval()
    x = torch.randn(2, n, *PATCH)
    out = net(x, return_heads=True, return_attention=True)
    att = out.extras["attention"]
    locations = 2 * 2 * 2
    assert att.shape == (2, locations, 2, n + 1, n + 1)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, locations, 2, n + 1))
    layers = net.temporal_attention(x)
    assert len(layers) == 2
    torch.testing.assert_close(layers[-1], att)
    maps = net.phase_attention_maps(x)
    assert maps.shape == (2, n, *BOTTLENECK)
    assert (maps.sum(1) <= 1 + 1e-5).all() and (maps >= 0).all()
    # the explicit-weights path gives the same outputs as the fused path
    torch.testing.assert_close(out.cls, net(x, return_heads=True).cls, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temporal", ["mean", "convgru"])
def test_attention_is_none_without_transformer(temporal):
    net = make(3, temporal).eval()
    assert net(torch.randn(1, 3, *PATCH), return_heads=True, return_attention=True).extras["attention"] is None
    with pytest.raises(ValueError, match="no attention"):
        net.temporal_attention(torch.randn(1, 3, *PATCH))


def test_mean_ablation_is_invariant_to_permuting_non_reference_phases():
    net = make(4, "mean", ds=False, reference_phase=1).eval()
    x = torch.randn(2, 4, *PATCH)
    perm = [3, 1, 0, 2]  # reference (1) stays in place
    a, b = net(x, return_heads=True), net(x[:, perm], return_heads=True)
    torch.testing.assert_close(a.seg, b.seg, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.cls, b.cls, rtol=1e-4, atol=1e-5)


def test_transformer_knows_phase_order_and_decodes_the_reference_phase():
    net = make(3, "transformer", ds=False, reference_phase=1).eval()
    x = torch.randn(2, 3, *PATCH)
    perm = [2, 1, 0]
    a, b = net(x, return_heads=True), net(x[:, perm], return_heads=True)
    assert not torch.allclose(a.cls, b.cls, atol=1e-5)  # phase embedding: order matters for the class
    # temporal output projection is zero at init: segmentation = U-Net on the reference phase
    torch.testing.assert_close(a.seg, b.seg)
    y = x.clone()
    y[:, 0] = torch.randn_like(y[:, 0])
    torch.testing.assert_close(net(y), a.seg)
    with torch.no_grad():
        net.temporal_out.weight.normal_()
    assert not torch.allclose(net(y), net(x))  # once learned, the other phases reach the segmentation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temporal", ["transformer", "convgru"])
def test_autocast_outputs_are_finite(dtype, temporal):
    try:  # some CPU builds lack reduced-precision kernels for 3D convolutions: probe a plain conv, not our code
        with torch.autocast("cpu", dtype=dtype):
            torch.nn.Conv3d(1, 2, 3)(torch.randn(1, 1, 4, 4, 4))
    except RuntimeError as e:
        pytest.skip(f"{dtype} autocast of Conv3d not supported on this CPU build: {e}")
    net = make(3, temporal, ds=False)
    x = torch.randn(1, 3, *PATCH) * 50
    with torch.autocast("cpu", dtype=dtype):
        out = net(x, return_heads=True, return_attention=temporal == "transformer")
    assert torch.isfinite(out.seg.float()).all() and torch.isfinite(out.cls.float()).all()
    if temporal == "transformer":
        torch.testing.assert_close(out.extras["attention"].sum(-1), torch.ones_like(out.extras["attention"][..., 0]))


def test_feature_map_size_grows_with_phases_and_temporal_cost():
    sizes = {n: make(n).compute_conv_feature_map_size(PATCH) for n in (1, 3, 6)}
    assert sizes[1] < sizes[3] < sizes[6]
    base = make(3, "mean").compute_conv_feature_map_size(PATCH)
    assert base < make(3, "transformer").compute_conv_feature_map_size(PATCH)
    assert base < make(3, "convgru").compute_conv_feature_map_size(PATCH)
    assert sizes[3] == make(3, share=False).compute_conv_feature_map_size(PATCH)  # same activations, more weights
    assert sizes[3] < make(3, skip_fusion="attention").compute_conv_feature_map_size(PATCH)
    assert sizes[3] < make(3, temporal_dim=64).compute_conv_feature_map_size(PATCH)


def test_built_from_plans_entry_by_nnunet():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch_kwargs = {**TINY_TOPOLOGY, "conv_op": "torch.nn.modules.conv.Conv3d",
                   "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "nonlin": "torch.nn.LeakyReLU",
                   "dropout_op": None, "dropout_op_kwargs": None, "n_conv_per_stage": [1, 1, 1],
                   "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]], "kernel_sizes": [[3, 3, 3]] * 3,
                   "encoder": "plain", "num_phases": 3, "reference_phase": 1, "num_cls_classes": 3,
                   "temporal": "transformer", **TINY_TEMPORAL, "skip_fusion": "weights", "share_weights": True}
    net = get_network_from_plans("nnunet_ext.architectures.stdnet.STDNet", arch_kwargs,
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 3, 3, deep_supervision=True)
    assert isinstance(net, STDNet) and net.decoder.deep_supervision
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert net(torch.randn(1, 3, *PATCH)).shape == (1, 3, *PATCH)
    # checkpoints load strictly into a freshly built twin (inference rebuilds the network)
    twin = get_network_from_plans("nnunet_ext.architectures.stdnet.STDNet", arch_kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 3, 3, deep_supervision=False)
    twin.load_state_dict(net.state_dict(), strict=True)


def test_several_channels_per_phase_and_2d():
    torch.manual_seed(0)
    net = STDNet(6, 2, **TINY_TOPOLOGY, n_conv_per_stage=1, num_phases=3, **TINY_TEMPORAL)
    assert net.channels_per_phase == 2
    assert net(torch.randn(1, 6, *PATCH)).shape == (1, 2, *PATCH)
    topo2d = {**TINY_TOPOLOGY, "conv_op": nn.Conv2d, "norm_op": nn.InstanceNorm2d, "strides": (1, 2, 2)}
    net2d = STDNet(3, 2, **topo2d, n_conv_per_stage=1, temporal="convgru", skip_fusion="attention", **TINY_TEMPORAL)
    out = net2d(torch.randn(2, 3, 16, 16), return_heads=True)
    assert out.seg.shape == (2, 2, 16, 16) and out.cls.shape == (2, 3)


def test_no_head_when_no_classes():
    net = STDNet(3, 2, **TINY_TOPOLOGY, n_conv_per_stage=1, num_cls_classes=0, **TINY_TEMPORAL)
    assert net.cls_head is None and net(torch.randn(1, 3, *PATCH), return_heads=True).cls is None


@pytest.mark.parametrize("kwargs,match", [
    ({"input_channels": 4, "num_phases": 3}, "not num_phases"),
    ({"reference_phase": 3}, "not a phase index"),
    ({"temporal": "lstm"}, "temporal="),
    ({"skip_fusion": "concat"}, "skip_fusion="),
    ({"encoder": "swin"}, "encoder="),
    ({"temporal_dim": 10, "temporal_heads": 4}, "divisible"),
])
def test_invalid_arguments_fail_clearly(kwargs, match):
    args = {"input_channels": 3, "num_classes": 2, **TINY_TOPOLOGY, "n_conv_per_stage": 1, **TINY_TEMPORAL, **kwargs}
    with pytest.raises(ValueError, match=match):
        STDNet(**args)


def test_wrong_channel_count_at_forward_fails_clearly():
    with pytest.raises(ValueError, match="phase"):
        make(3)(torch.randn(1, 2, *PATCH))


def test_flops_count_on_the_meta_device():
    """Paper-size FLOP/memory figures are computed without allocating anything."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for n in (1, 3):
        with torch.device("meta"):
            net = make(n)
        counter = FlopCounterMode(display=False)
        with counter:
            net(torch.randn(1, n, *PATCH, device="meta"), return_heads=True).cls.sum().backward()
        flops[n] = counter.get_total_flops()
    assert 0 < flops[1] < flops[3]


def test_lesion_mask_changes_only_the_pooling_of_the_head():
    from nnunet_ext.architectures.blocks.heads import lesion_weighted_pool

    torch.manual_seed(0)
    net = make(cls_pool_channels=[2]).eval()
    x = torch.randn(2, 3, 16, 32, 32)
    mask = torch.zeros(2, 1, 16, 32, 32, dtype=torch.bool)
    mask[:, :, 4:8, 8:16, 8:16] = True
    with torch.no_grad():
        plain = net(x, return_heads=True)
        masked = net(x, return_heads=True, lesion_mask=mask)
        _, cls_feat, _ = net._temporal_context(net._phase_features(x)[-1])
        expected = net.cls_head(lesion_weighted_pool(cls_feat, None, [2], lesion_mask=mask))
    for a, b in zip(plain.seg, masked.seg):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(masked.cls, expected)
    assert not torch.allclose(plain.cls, masked.cls)
