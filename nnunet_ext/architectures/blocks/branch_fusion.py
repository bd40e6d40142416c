"""Multi-scale fusion of DeSamba's two encoder branches (SAMNet and MambaOut) at one scale, for 2D and 3D.

Paper: DeSamba (arXiv 2507.15487; no public code): per sequence, "a multi-scale fusion block" merges the SAMNet
feature and the MambaOut feature of the same scale into the sequence feature f_i. The paper does not specify the
block; this file chooses one.

What is chosen here (C = channels, a = SAMNet feature, b = MambaOut feature, both (B, C, *spatial)):

* ``h = pw_in([a, b])``: pointwise conv 2C -> C (mixes the two branches per position);
* multi-scale context: ``dw3(h) + dw7(h)``, depthwise convs with kernels 3 and 7 (the two kernel sizes of SAMNet),
  then LayerNorm over the channels (float32) and GELU;
* ``pw_out``: pointwise conv C -> C, zero-initialised;
* ``f = (a + b) / 2 + pw_out(...)``: a residual on the mean of the two branches, so the fusion starts as their
  plain average and learns what to add. ``pw_out`` still gets a gradient from the first step (its input is not zero),
  and the rest of the block from the second.

Everything is convolutional with ``conv_op`` and channel LayerNorm, so any batch size and spatial size works
(InstanceNorm would fail on a single-voxel bottleneck).
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.architectures.blocks.channel_layer_norm import ChannelLayerNorm


class MultiScaleFusion(nn.Module):
    """Fusion of two same-scale features (see the module docstring): ``forward(a, b)``, both (B, C, *spatial) ->
    (B, C, *spatial).

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d.
        kernel_sizes: the depthwise kernels of the multi-scale step (odd; default 3 and 7).
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], *, kernel_sizes: tuple[int, ...] = (3, 7)):
        super().__init__()
        if not kernel_sizes or any(k % 2 != 1 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {kernel_sizes}")
        self.channels, self.kernel_sizes = channels, tuple(kernel_sizes)
        self.pw_in = conv_op(2 * channels, channels, 1)
        self.dw = nn.ModuleList(conv_op(channels, channels, k, padding=k // 2, groups=channels) for k in kernel_sizes)
        self.norm = ChannelLayerNorm(channels)
        self.act = nn.GELU()
        self.pw_out = conv_op(channels, channels, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """``pw_out`` zero (the block starts as the mean of its inputs); unit LayerNorm."""
        nn.init.zeros_(self.pw_out.weight)
        nn.init.zeros_(self.pw_out.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.shape[1] != self.channels:
            raise ValueError(f"expected two inputs of the same shape with {self.channels} channels, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        h = self.pw_in(torch.cat((a, b), dim=1))
        h = sum(dw(h) for dw in self.dw)
        return 0.5 * (a + b) + self.pw_out(self.act(self.norm(h)))

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the inputs, owned by the caller, are not
        counted). Per voxel: the concatenation (2C), ``pw_in``'s output (C, kept by the depthwise convs), the
        multi-scale sum (C, kept by LayerNorm) with LayerNorm's mean and inverse std (2), the LayerNorm output (C,
        kept by GELU) and the GELU output (C, kept by ``pw_out``) -> 6C + 2."""
        return int(spatial_numel * (6 * self.channels + 2))
