"""SFPM-f: TexLiverNet's frequency perception on the skip connections, DFFormer's dynamic (routed) global filter.

Papers: TexLiverNet (arXiv 2411.04595), SFPM-f; Tatsunami & Taki, "FFT-based Dynamic Token Mixer for Vision"
(DFFormer, 2024), whose ``DynamicFilter`` TexLiverNet's released code (``model/SFPM.py``, ``SFPM_F``) reuses.

What follows DFFormer / the TexLiverNet code (C = channels, E = expansion * C, F = num_filters):

* pointwise conv C -> E (no bias) -> StarReLU;
* real FFT over the spatial axes (``norm="ortho"``);
* a router: global average pool of the *input* -> Linear C -> C/4 -> StarReLU -> Linear -> F * E -> softmax over the
  F filters, separately for every expanded channel (no biases);
* the spectrum of channel e is multiplied by ``sum_f route[b, f, e] * filter_f``, with F learned complex filters of
  shape ``filter_size`` = (H, W//2 + 1) in 2D, shared by all channels and initialised N(0, 0.02^2);
* inverse real FFT to the input size, pointwise conv E -> C (no bias).

Fusion with the skip (paper eq. 5 vs. code): the paper describes the filtered high-frequency features being fused
with the skip features (the design notes summarise it as ``G = Linear(StarReLU(Linear(.)))`` in the frequency domain,
"fused with the skip features"); the released network does ``t = x + scale * SFPM_F(x)`` with a learnable scalar
``scale`` initialised to 0.01. This block follows the code and owns the scalar: ``out = x + scale * filter(x)``
(``init_scale``), so at initialisation it is close to the identity and the skip passes through.

What is chosen here:

* **Numerics**: the StarReLU before the FFT, the FFT, the filter mixing and the inverse FFT run in float32 with
  autocast off (cuFFT has no bfloat16 and only power-of-two float16; ``relu(x)**2`` overflows float16); the inverse
  gets explicit sizes ``s=`` (odd last dims). The router runs in float32 too (it is tiny). The pointwise convs
  follow autocast. The output has the input's dtype.
* **Other sizes**: the filters are stored at ``filter_size``; for another rfft grid they are resized by (bi/tri)linear
  interpolation of the real and imaginary parts, ``align_corners=True`` (DFFormer resizes with bicubic, which has
  no 3D form), so any patch size works. nnU-Net trains and predicts at the same patch size, where the stored
  filters are used as they are, without interpolation.
* **3D**: ``filter_size`` then has three entries (D, H, W//2 + 1) and ``rfftn`` runs over the three axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_ext.architectures.blocks.star_relu import StarReLU
from nnunet_ext.architectures.blocks.temporal_transformer import autocast_off


class FrequencyPerception(nn.Module):
    """SFPM-f (see the module docstring): x (B, C, *spatial) -> ``x + scale * filter(x)``, same shape and dtype.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d; the number of spatial axes must equal ``len(filter_size)``.
        num_filters: F learned complex filters mixed by the router (DFFormer: 4).
        filter_size: rfft grid the filters are stored at: (H, W//2 + 1) or (D, H, W//2 + 1) for the training patch
            size of this level (default: a 32x32 feature map).
        expansion: E / C of the pointwise expansion (DFFormer: 2).
        init_scale: initial value of the learnable residual scalar (TexLiverNet code: 0.01).
        router_ratio: hidden width of the router MLP relative to C (DFFormer: 0.25).
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], num_filters: int = 4,
                 filter_size: Sequence[int] = (32, 17), expansion: float = 2.0, *, init_scale: float = 0.01,
                 router_ratio: float = 0.25):
        super().__init__()
        dims = convert_conv_op_to_dim(conv_op)
        filter_size = tuple(int(s) for s in filter_size)
        if len(filter_size) != dims:
            raise ValueError(f"filter_size {filter_size} must have one entry per spatial axis ({dims})")
        self.channels, self.num_filters, self.filter_size = channels, num_filters, filter_size
        self.expanded = max(1, int(round(expansion * channels)))
        self.pwconv1 = conv_op(channels, self.expanded, 1, bias=False)
        self.act = StarReLU()
        hidden = max(1, int(router_ratio * channels))
        self.router = nn.Sequential(nn.Linear(channels, hidden, bias=False), StarReLU(),
                                    nn.Linear(hidden, num_filters * self.expanded, bias=False))
        self.filters = nn.Parameter(torch.empty(num_filters, *filter_size, 2))
        self.pwconv2 = conv_op(self.expanded, channels, 1, bias=False)
        self.init_scale = init_scale
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.init_weights()

    def init_weights(self) -> None:
        """DFFormer: filters N(0, 0.02^2); StarReLUs s=1, b=0; ``scale`` back to ``init_scale``."""
        with torch.no_grad():
            self.filters.normal_(0.0, 0.02)
        self.act.init_weights()
        self.router[1].init_weights()
        nn.init.constant_(self.scale, self.init_scale)

    def filter_weights(self, grid: Sequence[int]) -> torch.Tensor:
        """The F complex filters on the rfft grid ``grid`` (complex64, (F, *grid)): the stored filters themselves at
        ``filter_size``, otherwise linearly interpolated real and imaginary parts."""
        grid = tuple(int(g) for g in grid)
        w = self.filters.float()
        if grid != self.filter_size:
            mode = "bilinear" if len(grid) == 2 else "trilinear"
            planes = w.movedim(-1, 1).reshape(1, 2 * self.num_filters, *self.filter_size)
            planes = F.interpolate(planes, size=grid, mode=mode, align_corners=True)
            w = planes.view(self.num_filters, 2, *grid).movedim(1, -1)
        return torch.view_as_complex(w.contiguous())

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights (B, F, E), float32, summing to 1 over F, from the global average of x (B, C, *spatial)."""
        with autocast_off(x.device.type):
            pooled = x.float().mean(dim=tuple(range(2, x.ndim)))
            logits = self.router(pooled).view(x.shape[0], self.num_filters, self.expanded)
            return torch.softmax(logits, dim=1)

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled branch ``filter(x)``: (B, C, *spatial) -> (B, C, *spatial) (autocast dtype of the conv)."""
        spatial = tuple(x.shape[2:])
        axes = tuple(range(2, x.ndim))
        grid = (*spatial[:-1], spatial[-1] // 2 + 1)
        route = self.route(x)
        h = self.pwconv1(x)
        with autocast_off(x.device.type):
            h = self.act(h.float())
            spectrum = torch.fft.rfftn(h, dim=axes, norm="ortho")
            weight = torch.einsum("bfe,f...->be...", route.to(spectrum.dtype), self.filter_weights(grid))
            y = torch.fft.irfftn(spectrum * weight, s=spatial, dim=axes, norm="ortho")
        return self.pwconv2(y.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        if x.ndim - 2 != len(self.filter_size):
            raise ValueError(f"expected {len(self.filter_size)} spatial axes, got input of shape {tuple(x.shape)}")
        return (x + self.scale.to(x.dtype) * self.filtered(x)).to(x.dtype)

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted). Per voxel: ``relu`` output and its square inside StarReLU (2E), the spectrum and the mixed filter
        (complex, E each, two real elements per rfft bin: about 2 * E * r with r = 2 * prod(grid) / prod(spatial),
        taken at ``filter_size``: 1.0625 for 32x32), the inverse FFT output (E, input of the second pointwise conv)
        and that conv's output (C, kept for ``scale``). The same count holds under autocast (StarReLU then keeps the
        float32 copy instead of the conv output)."""
        *lead, half = self.filter_size
        full = math.prod(lead) * 2 * (half - 1)
        r = 2 * math.prod(self.filter_size) / full
        e, c = self.expanded, self.channels
        return int(math.ceil(spatial_numel * (2 * e + 2 * e * r + e + c)))
