"""Blocks of TexLiverNet: DOR-MLP (rolling MLP), StarReLU, PConv, SFPM-s, SFPM-f, text-image agent attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_ext.architectures.blocks.agent_attention import TextImageAgentAttention
from nnunet_ext.architectures.blocks.frequency_perception import FrequencyPerception
from nnunet_ext.architectures.blocks.partial_conv import PartialConv
from nnunet_ext.architectures.blocks.rolling_mlp import RollingMLP, roll_channels
from nnunet_ext.architectures.blocks.spatial_perception import SpatialPerception
from nnunet_ext.architectures.blocks.star_relu import StarReLU

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
SPATIAL = {2: (8, 8), 3: (4, 6, 6)}


def _saved_elements_per_sample(module: nn.Module, *inputs) -> tuple[float, torch.Tensor]:
    """Elements of the tensors autograd keeps for backward in one forward pass (deduplicated by storage; parameters
    and the inputs excluded), per sample: what ``activation_elements`` models."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip |= {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.numel():
            kept[ptr] = max(kept.get(ptr, 0), t.untyped_storage().nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    return sum(kept.values()) / inputs[0].shape[0], out


def _assert_every_parameter_has_a_gradient(module: nn.Module, out: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    (out.float() ** 2).mean().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert missing == []


def _spatial_perception(dims: int, channels: int = 8, inplace: bool = True) -> SpatialPerception:
    return SpatialPerception(channels, CONV[dims], NORM[dims], {"eps": 1e-5, "affine": True}, nn.LeakyReLU,
                             {"negative_slope": 1e-2, "inplace": inplace})


# ---------------------------------------------------------------- roll_channels
@pytest.mark.parametrize("shape, axis", [((2, 5, 4, 6), 2), ((2, 5, 4, 6), 3), ((1, 9, 4, 3), 2),
                                         ((1, 7, 3, 4, 5), 2), ((1, 7, 3, 4, 5), 3), ((1, 7, 3, 4, 5), 4),
                                         ((2, 3, 4, 6), -1)])
@pytest.mark.parametrize("sign", [1, -1, 2])
def test_roll_channels_equals_a_per_channel_torch_roll(shape, axis, sign):
    x = torch.randn(shape)
    dim = (axis % len(shape)) - 1
    expected = torch.stack([torch.roll(x[:, c], sign * c, dims=dim) for c in range(shape[1])], dim=1)
    assert torch.equal(roll_channels(x, axis, sign), expected)


def test_roll_channels_backward_is_the_inverse_roll():
    x = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: roll_channels(t, 3, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t: roll_channels(t, 2, -1), (x,))
    g = torch.randn(2, 3, 4, 5, dtype=torch.double)
    (grad,) = torch.autograd.grad(roll_channels(x, 2, 1), x, g)
    assert torch.equal(grad, roll_channels(g, 2, -1))


def test_roll_channels_rejects_non_spatial_axes_and_survives_inference_mode():
    with pytest.raises(ValueError, match="spatial"):
        roll_channels(torch.zeros(1, 2, 3, 3), 1)
    with torch.inference_mode():  # a first call in inference mode must not cache an unusable index
        roll_channels(torch.zeros(1, 6, 5, 7), 3)
    x = torch.randn(1, 6, 5, 7, requires_grad=True)
    roll_channels(x, 3).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


# ---------------------------------------------------------------- RollingMLP
@pytest.mark.parametrize("dims", [2, 3])
def test_rolling_mlp_shape_gradients_identity_start_and_memory_model(dims):
    torch.manual_seed(0)
    block = RollingMLP(12, CONV[dims])
    x = torch.randn(2, 12, *SPATIAL[dims])
    measured, y = _saved_elements_per_sample(block, x)
    assert y.shape == x.shape
    assert (y - x).norm() / x.norm() < 0.05  # layer scale 0.01: starts near the identity
    _assert_every_parameter_has_a_gradient(block, y)
    numel = x[0, 0].numel()
    assert 0.9 < block.activation_elements(numel) / measured < 1.1
    assert 0 < block.activation_elements(numel) < block.activation_elements(2 * numel)


def test_rolling_mlp_follows_rolling_unet_orders_and_options():
    block = RollingMLP(8, nn.Conv2d, mlp_ratio=2.0, dropout=0.1, layer_scale_init=None)
    assert block.plan1 == ((2, 1), (3, 1)) and block.plan2 == ((3, -1), (2, 1))  # H+, W+ / W-, H+
    assert block.gamma is None and block.branch1[0].out_channels == 16 and block.branch1[1].out_channels == 8
    block3d = RollingMLP(8, nn.Conv3d)
    assert block3d.plan1 == ((2, 1), (3, 1), (4, 1)) and block3d.plan2 == ((4, -1), (3, 1), (2, 1))
    x = torch.randn(2, 8, 6, 5)
    y = block(x)
    assert y.shape == x.shape and not torch.allclose(y, x, atol=0.1)  # the papers' form: no outer residual
    _assert_every_parameter_has_a_gradient(block, y)
    block.eval()
    torch.testing.assert_close(block(x), block(x))


def test_rolling_mlp_under_bf16_autocast():
    block = RollingMLP(8, nn.Conv2d)
    x = torch.randn(2, 8, 6, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    _assert_every_parameter_has_a_gradient(block, y)


# ---------------------------------------------------------------- StarReLU and PartialConv
def test_star_relu_initial_values_formula_and_dtype():
    act = StarReLU()
    assert act.scale.item() == 1.0 and act.bias.item() == 0.0
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(act(x), torch.relu(x) ** 2)
    with torch.no_grad():
        act.scale.fill_(0.5)
        act.bias.fill_(-1.0)
    torch.testing.assert_close(act(x), 0.5 * torch.relu(x) ** 2 - 1.0)
    assert act(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("dims, channels, ratio, expected", [(2, 8, 0.25, 2), (3, 12, 0.25, 3), (2, 3, 0.25, 1),
                                                             (2, 4, 1.0, 4)])
def test_partial_conv_convolves_only_the_first_channels(dims, channels, ratio, expected):
    torch.manual_seed(0)
    pconv = PartialConv(channels, CONV[dims], ratio=ratio)
    assert pconv.conv_channels == expected
    x = torch.randn(2, channels, *SPATIAL[dims])
    y = pconv(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, expected:], x[:, expected:])
    assert not torch.allclose(y[:, :expected], x[:, :expected])
    _assert_every_parameter_has_a_gradient(pconv, y)


# ---------------------------------------------------------------- SpatialPerception
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("inplace", [True, False])
def test_spatial_perception_starts_near_identity_and_memory_model(dims, inplace):
    torch.manual_seed(0)
    block = _spatial_perception(dims, inplace=inplace)
    x = torch.randn(2, 8, *SPATIAL[dims])
    measured, y = _saved_elements_per_sample(block, x)
    assert y.shape == x.shape and block.scale.item() == pytest.approx(0.01)
    assert 0 < (y - x).norm() / x.norm() < 0.05
    _assert_every_parameter_has_a_gradient(block, y)
    numel = x[0, 0].numel()
    assert 0.9 < block.activation_elements(numel) / measured < 1.1
    assert 0 < block.activation_elements(numel) < block.activation_elements(2 * numel)


def test_spatial_perception_odd_channels():
    block = _spatial_perception(2, channels=7)
    assert block(torch.randn(1, 7, 9, 9)).shape == (1, 7, 9, 9)


# ---------------------------------------------------------------- FrequencyPerception
@pytest.mark.parametrize("dims, filter_size, spatial", [(2, (8, 5), (8, 8)), (3, (4, 6, 4), (4, 6, 6))])
def test_frequency_perception_shape_gradients_and_memory_model(dims, filter_size, spatial):
    torch.manual_seed(0)
    block = FrequencyPerception(6, CONV[dims], filter_size=filter_size)
    x = torch.randn(2, 6, *spatial)
    measured, y = _saved_elements_per_sample(block, x)
    assert y.shape == x.shape and block.expanded == 12
    assert (y - x).norm() / x.norm() < 0.05  # residual scale 0.01
    _assert_every_parameter_has_a_gradient(block, y)
    numel = x[0, 0].numel()
    assert 0.9 < block.activation_elements(numel) / measured < 1.1
    assert 0 < block.activation_elements(numel) < block.activation_elements(2 * numel)
    route = block.route(x)
    assert route.shape == (2, 4, 12)
    torch.testing.assert_close(route.sum(1), torch.ones(2, 12))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_frequency_perception_fft_in_float32_under_autocast(monkeypatch, dtype):
    torch.manual_seed(0)
    block = FrequencyPerception(4, nn.Conv2d, filter_size=(8, 5))
    seen = []
    rfftn = torch.fft.rfftn

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return rfftn(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfftn", spy)
    x = (100 * torch.randn(2, 4, 8, 8)).to(dtype)  # relu(x)**2 of such values overflows float16
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
    assert seen == [torch.float32]
    assert y.dtype == dtype and torch.isfinite(y).all()
    _assert_every_parameter_has_a_gradient(block, y)


def test_frequency_perception_resizes_its_filters_for_other_sizes():
    torch.manual_seed(0)
    block = FrequencyPerception(4, nn.Conv2d, filter_size=(8, 5))
    stored = torch.view_as_complex(block.filters.detach())
    assert torch.equal(block.filter_weights((8, 5)).detach(), stored)  # no interpolation at filter_size
    resized = block.filter_weights((12, 7))
    assert resized.shape == (4, 12, 7) and resized.dtype == torch.complex64
    torch.testing.assert_close(resized[:, 0, 0], stored[:, 0, 0])  # align_corners keeps the corners
    torch.testing.assert_close(resized[:, -1, -1], stored[:, -1, -1])
    for spatial in ((12, 12), (7, 9)):  # larger, and odd sizes (irfftn needs s=)
        x = torch.randn(2, 4, *spatial)
        y = block(x)
        assert y.shape == x.shape
        _assert_every_parameter_has_a_gradient(block, y)
    with pytest.raises(ValueError, match="spatial"):
        FrequencyPerception(4, nn.Conv3d, filter_size=(8, 5))


# ---------------------------------------------------------------- TextImageAgentAttention
def _tia(dims: int = 2, **kwargs) -> TextImageAgentAttention:
    torch.manual_seed(0)
    kwargs = {"heads": 2, "agents": 3, "max_text_tokens": 8, **kwargs}
    return TextImageAgentAttention(16, 12, CONV[dims], **kwargs)


@pytest.mark.parametrize("dims", [2, 3])
def test_tia_shape_gradients_and_memory_model(dims):
    tia = _tia(dims)
    f = torch.randn(2, 16, *SPATIAL[dims])
    text = torch.randn(2, 6, 12)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    measured, y = _saved_elements_per_sample(tia, f, text, mask)
    assert y.shape == f.shape
    _assert_every_parameter_has_a_gradient(tia, y)
    assert tia.no_text.grad is not None and torch.count_nonzero(tia.no_text.grad) == 0  # in the graph, unused
    y = tia(f)  # no text at all: the positional encoding of text tokens must stay in the graph too
    _assert_every_parameter_has_a_gradient(tia, y)
    assert torch.count_nonzero(tia.no_text.grad) > 0
    numel = f[0, 0].numel()
    assert 0.8 < tia.activation_elements(numel, 6) / measured < 1.35
    assert 0 < tia.activation_elements(numel, 6) < tia.activation_elements(2 * numel, 6)
    assert tia.activation_elements(numel, 6) < tia.activation_elements(numel, 8)


def test_tia_padded_tokens_do_not_matter():
    tia = _tia().eval()
    f, text = torch.randn(2, 16, 6, 7), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, False]])
    y = tia(f, text, mask)
    changed = torch.where(mask[..., None], text, torch.full_like(text, float("nan")))
    assert torch.equal(tia(f, changed, mask), y)
    changed = torch.where(mask[..., None], text, 100 * torch.randn_like(text))
    assert torch.equal(tia(f, changed, mask), y)
    torch.testing.assert_close(tia(f, text[:, :4], mask[:, :4]), y)  # trailing padding removed: same result
    assert not torch.allclose(tia(f, text, torch.ones_like(mask)), y)


def test_tia_without_text_uses_the_no_text_token():
    tia = _tia().eval()
    f, text = torch.randn(2, 16, 5, 5), torch.randn(2, 4, 12)
    none = tia(f)
    empty = tia(f, text, torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close(empty, none)
    # one sample without text, one with: each sample follows its own path
    mixed = tia(f, text, torch.tensor([[False] * 4, [True] * 4]))
    torch.testing.assert_close(mixed[0], none[0])
    torch.testing.assert_close(mixed[1], tia(f, text)[1])
    # a different no-text embedding changes exactly the text-free samples
    with torch.no_grad():
        tia.no_text.copy_(torch.randn_like(tia.no_text))
    assert not torch.allclose(tia(f), none)
    torch.testing.assert_close(tia(f, text)[1], mixed[1])


def test_tia_text_dropout_only_in_training():
    tia = _tia(text_dropout=1.0)
    f, text = torch.randn(2, 16, 5, 5), torch.randn(2, 4, 12)
    tia.train()
    torch.testing.assert_close(tia(f, text), tia(f))  # every text dropped
    tia.eval()
    y = tia(f, text)
    assert torch.equal(tia(f, text), y)  # deterministic
    assert not torch.allclose(y, tia(f))
    half = _tia(text_dropout=0.5).train()
    torch.manual_seed(1)
    many_f, many_text = f[:1].expand(64, -1, -1, -1), text[:1].expand(64, -1, -1)
    dropped = torch.isclose(half(many_f, many_text), half(many_f)).flatten(1).all(1)
    assert 0 < dropped.sum() < 64  # some samples dropped, some kept


def test_tia_different_texts_give_different_outputs_and_any_size_works():
    tia = _tia().eval()
    f = torch.randn(2, 16, 5, 6)  # smaller than the 8x8 positional grid; 3x3 agents
    a, b = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    assert not torch.allclose(tia(f, a), tia(f, b))
    assert tia(torch.randn(1, 16, 2, 11), a[:1]).shape == (1, 16, 2, 11)  # fewer rows than agents
    with pytest.raises(ValueError, match="max_text_tokens"):
        tia(f, torch.randn(2, 9, 12))
    with pytest.raises(ValueError, match="divisible"):
        TextImageAgentAttention(10, 12, nn.Conv2d, heads=4)


def test_tia_under_bf16_autocast_keeps_float32_softmax():
    tia = _tia()
    f, text = torch.randn(2, 16, 6, 6).bfloat16(), torch.randn(2, 4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tia(f, text)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    _assert_every_parameter_has_a_gradient(tia, y)
