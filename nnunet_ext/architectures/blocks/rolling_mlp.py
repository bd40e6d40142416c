"""DOR-MLP: the double orthogonal rolling MLP of Rolling-UNet, used by TexLiverNet at level 4 and the bottleneck.

Papers: Liu et al., "Rolling-Unet: Revitalizing MLP's Ability to Efficiently Extract Long-Distance Dependencies for
Medical Image Segmentation" (AAAI 2024); TexLiverNet (arXiv 2411.04595) reuses the block unchanged (its released
code swaps the ReLU of the depthwise-separable branch for a LeakyReLU).

What follows the papers / their code (2D, C = channels, ``roll+`` = channel c rolled by +c positions):

* OR-MLP 1: ``roll+`` along H -> token-wise Linear -> GELU -> dropout -> ``roll+`` along W -> Linear -> dropout.
* OR-MLP 2 (the orthogonal direction): ``roll-`` along W -> Linear -> GELU -> dropout -> ``roll+`` along H -> Linear
  -> dropout. (The code puts GELU after every Linear of a branch except the last; so does this file.)
* Both branch outputs are summed with the input, concatenated (2C), LayerNorm, Linear 2C -> C, dropout, plus the
  input: ``x1``.
* In parallel, a depthwise-separable conv branch on the input: depthwise 3x3 -> pointwise 1x1 -> LeakyReLU ->
  norm: ``x2``.
* ``[x1, x2]`` -> Linear 2C -> C -> dropout.

A "token-wise Linear" (the same C -> C map at every pixel) is a 1x1 convolution; it is implemented as one here
(``conv_op`` with kernel 1) so the whole block stays in nnU-Net's (B, C, *spatial) layout.

What is chosen here:

* **Rolling** (:func:`roll_channels`) is one ``torch.gather`` with a cached index instead of C ``torch.roll`` calls
  (the design notes measured 11.8 ms for the loop vs 0.019 ms for a gather at C=512, 32x32; ``benchmarks/
  texlivernet_blocks.py`` re-measures it). Its backward is the inverse roll, again one gather: no scatter-add, so
  it is deterministic on CUDA and as cheap as the forward.
* **3D**: branch 1 rolls ``+c`` along D, H, W in turn; branch 2 visits the axes in the reverse order (W, H, D) with
  ``-c`` on the first and ``+c`` on the others. In 2D this is exactly Rolling-UNet's order (H, W / W, H).
* **mlp_ratio**: the branch Linears go C -> h -> ... -> h -> C with h = round(C * mlp_ratio) (Rolling-UNet and
  TexLiverNet use 1; their code only works for 1).
* **Norm of the conv branch**: InstanceNorm (affine, eps 1e-5) matched to ``conv_op``, instead of the code's
  BatchNorm: nnU-Net trains with batch size 2. LayerNorm runs in float32 (also under autocast).
* **Residual**: the papers' block has no outer residual (the input only enters through the branch sums and ``x1``).
  Here the output is ``x + gamma * block(x)`` with a per-channel ``gamma`` initialised to ``layer_scale_init``
  (0.01; LayerScale, Touvron et al. 2021), so the block starts close to the identity, which nnU-Net-style training
  from scratch with a deep stack tolerates well. ``layer_scale_init=None`` gives the papers' form ``block(x)``.
"""

from __future__ import annotations

import functools

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, get_matching_instancenorm
from torch import nn

from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32


@functools.lru_cache(maxsize=256)
def _cached_roll_index(channels: int, length: int, sign: int, device: torch.device) -> torch.Tensor:
    # created outside inference mode so that a first call under torch.inference_mode() does not cache an
    # inference tensor that later training steps could not use
    with torch.inference_mode(False), torch.no_grad():
        return _roll_index(channels, length, sign, device)


def _roll_index(channels: int, length: int, sign: int, device: torch.device) -> torch.Tensor:
    """(C, L) int64: ``index[c, i] = (i - sign * c) mod L``, the source position of output position i of channel c."""
    c = torch.arange(channels, device=device).unsqueeze(1)
    i = torch.arange(length, device=device).unsqueeze(0)
    return torch.remainder(i - sign * c, length)


def _gather_roll(x: torch.Tensor, axis: int, sign: int) -> torch.Tensor:
    channels, length = x.shape[1], x.shape[axis]
    if torch.compiler.is_compiling():  # no Python-side cache inside a traced graph
        index = _roll_index(channels, length, sign, x.device)
    else:
        index = _cached_roll_index(channels, length, sign, x.device)
    shape = [1] * x.ndim
    shape[1], shape[axis] = channels, length
    return torch.gather(x, axis, index.view(shape).expand(x.shape))


class _RollChannels(torch.autograd.Function):
    """Forward: one gather. Backward: the inverse roll (``-sign``), also one gather, itself differentiable."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: int, sign: int) -> torch.Tensor:
        ctx.axis, ctx.sign = axis, sign
        return _gather_roll(x, axis, sign)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _RollChannels.apply(grad, ctx.axis, -ctx.sign), None, None


def roll_channels(x: torch.Tensor, axis: int, sign: int = 1) -> torch.Tensor:
    """Roll channel c of x by ``sign * c`` positions (modulo the axis length) along the spatial axis ``axis``.

    Args:
        x: (B, C, *spatial).
        axis: index into ``x.shape`` of the spatial axis to roll along (>= 2; negative values count from the end).
        sign: +1 / -1 for the two directions (any integer multiplies the shift).

    Returns a new tensor of x's shape equal to ``torch.roll(x[:, c], sign * c, dims=axis - 1)`` for every channel c,
    computed by one vectorised ``torch.gather`` with an index cached per (C, length, sign, device).
    """
    if axis < 0:
        axis += x.ndim
    if not 2 <= axis < x.ndim:
        raise ValueError(f"axis must index a spatial dimension of a (B, C, *spatial) tensor of {x.ndim} dims, "
                         f"got {axis}")
    return _RollChannels.apply(x, axis, int(sign))


class RollingMLP(nn.Module):
    """DOR-MLP block (see the module docstring): x (B, C, *spatial) -> (B, C, *spatial), 2D and 3D.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d (decides the number of spatial axes rolled along).
        mlp_ratio: width of the inner Linears of each rolling branch, relative to C (papers: 1).
        dropout: dropout after every Linear (papers' code: 0.1 at level 4, 0.4 at the bottleneck).
        layer_scale_init: initial per-channel scale of the outer residual; None: no outer residual (papers).
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], mlp_ratio: float = 1.0, dropout: float = 0.0, *,
                 layer_scale_init: float | None = 0.01):
        super().__init__()
        dims = convert_conv_op_to_dim(conv_op)
        axes = tuple(range(2, 2 + dims))
        self.channels = channels
        self.hidden = max(1, round(channels * mlp_ratio))
        self.dropout = dropout
        widths = [channels] + [self.hidden] * (dims - 1) + [channels]
        self.branch1 = nn.ModuleList(conv_op(i, o, 1) for i, o in zip(widths[:-1], widths[1:]))
        self.branch2 = nn.ModuleList(conv_op(i, o, 1) for i, o in zip(widths[:-1], widths[1:]))
        self.plan1 = tuple((axis, 1) for axis in axes)
        self.plan2 = tuple((axis, -1 if k == 0 else 1) for k, axis in enumerate(reversed(axes)))
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.norm = LayerNormFp32(2 * channels)
        self.fuse = conv_op(2 * channels, channels, 1)
        self.dwconv = conv_op(channels, channels, 3, padding=1, groups=channels)
        self.pwconv = conv_op(channels, channels, 1)
        self.conv_act = nn.LeakyReLU()
        self.conv_norm = get_matching_instancenorm(conv_op)(channels, eps=1e-5, affine=True)
        self.proj = conv_op(2 * channels, channels, 1)
        self.layer_scale_init = layer_scale_init
        self.gamma = None if layer_scale_init is None else nn.Parameter(torch.full((channels,), layer_scale_init))
        self.init_weights()

    def init_weights(self) -> None:
        """Rolling-UNet's init: truncated-normal(0.02) token-wise Linears (here 1x1 convs) with zero bias, unit
        LayerNorm; ``gamma`` back to ``layer_scale_init``. nnU-Net's He init, if applied afterwards, re-initialises
        the convolutions; the block still starts near the identity through ``gamma``."""
        for conv in (*self.branch1, *self.branch2, self.fuse, self.proj):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if self.gamma is not None:
            nn.init.constant_(self.gamma, self.layer_scale_init)

    def _branch(self, x: torch.Tensor, convs: nn.ModuleList, plan: tuple[tuple[int, int], ...]) -> torch.Tensor:
        last = len(convs) - 1
        for k, (conv, (axis, sign)) in enumerate(zip(convs, plan)):
            x = conv(roll_channels(x, axis, sign))
            if k < last:
                x = self.act(x)
            x = self.drop(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        rolled = torch.cat((self._branch(x, self.branch1, self.plan1) + x,
                            self._branch(x, self.branch2, self.plan2) + x), dim=1)
        rolled = self.norm(rolled.movedim(1, -1)).movedim(-1, 1)
        x1 = self.drop(self.fuse(rolled)) + x
        x2 = self.conv_norm(self.conv_act(self.pwconv(self.dwconv(x))))
        y = self.drop(self.proj(torch.cat((x1, x2), dim=1)))
        if self.gamma is None:
            return y
        return x + self.gamma.to(y.dtype).view(1, -1, *([1] * (x.ndim - 2))) * y

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (memory model; the input, owned by the caller,
        is not counted).

        Per voxel, with n spatial axes and h = hidden width: each rolling branch keeps the input of each of its n
        Linears (C, then h) and the input of each GELU (h, n-1 of them) -> 2 * (C + 2 (n-1) h); the concatenation
        (2C, kept by LayerNorm) and the LayerNorm output (2C); the conv branch keeps the depthwise output, the
        pointwise output and the LeakyReLU output (3C); ``[x1, x2]`` (2C); the projection output (C, for ``gamma``).
        Dropout in training adds one mask per dropout call. Under autocast the float32 LayerNorm keeps a float32
        copy of its input instead of the concatenation (same element count).
        """
        c, h, n = self.channels, self.hidden, len(self.plan1)
        per_voxel = 2 * (c + 2 * (n - 1) * h) + 2 * c + 2 * c + 3 * c + 2 * c + (c if self.gamma is not None else 0)
        if self.dropout > 0 and self.training:
            per_voxel += 2 * ((n - 1) * h + c) + 2 * c
        return int(spatial_numel * per_voxel)
