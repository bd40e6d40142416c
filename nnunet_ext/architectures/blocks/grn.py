"""GRN: global response normalisation of ConvNeXt V2, for 2D and 3D feature maps.

Paper: Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders" (CVPR 2023), eq. 1-3;
used in the spatial and frequency branches of DeSamba's SAMBlock (arXiv 2507.15487).

What follows the paper (X the input, C channels, i a channel):

* global aggregation ``G(X)_i = ||X_i||_2``, the L2 norm of channel i over all spatial positions (H, W, and D in 3D);
* divisive normalisation ``N_i = G(X)_i / (mean_j G(X)_j + eps)``, eps = 1e-6;
* calibration with a residual: ``gamma * (X * N) + beta + X``, ``gamma`` and ``beta`` per channel and zero-initialised,
  so the layer starts as the identity.

What is chosen here:

* **Numerics**: the norms and their channel mean are accumulated in float32 with autocast off (a sum of squares over a
  3D patch overflows float16); the output keeps the input dtype.
* **Memory**: the output is computed as ``X * (1 + gamma * N) + beta``, which is the paper's expression rearranged:
  autograd then keeps only X (shared with the norm) and the small (B, C) factor, not a second copy of ``X * N``.
* **Layout**: channels-first (B, C, *spatial) by default, channels-last (B, *spatial, C) with ``channels_last=True``
  (the layout inside :class:`~nnunet_ext.architectures.blocks.convnext_block.ConvNeXtV2Block`).
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.architectures.blocks.temporal_transformer import autocast_off


class GRN(nn.Module):
    """Global response normalisation: x (B, C, *spatial) -> same shape and dtype (identity at initialisation).

    Args:
        channels: C.
        eps: added to the channel mean of the norms (paper: 1e-6).
        channels_last: the input is (B, *spatial, C) instead.
    """

    def __init__(self, channels: int, *, eps: float = 1e-6, channels_last: bool = False):
        super().__init__()
        self.channels, self.eps, self.channels_last = channels, eps, channels_last
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def init_weights(self) -> None:
        """The paper's init: ``gamma = beta = 0`` (the identity)."""
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_axis = x.ndim - 1 if self.channels_last else 1
        if x.shape[channel_axis] != self.channels:
            raise ValueError(f"expected {self.channels} channels on axis {channel_axis}, got shape {tuple(x.shape)}")
        spatial = tuple(a for a in range(1, x.ndim) if a != channel_axis)
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[channel_axis] = self.channels
        param_shape = [1] + shape[1:]
        with autocast_off(x.device.type):
            g = torch.linalg.vector_norm(x, dim=spatial, dtype=torch.float32)  # (B, C)
            n = g / (g.mean(dim=1, keepdim=True) + self.eps)
            scale = 1.0 + self.gamma.float() * n
            out = x * scale.to(x.dtype).view(shape) + self.beta.to(x.dtype).view(param_shape)
        return out

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward per sample: the input (C per voxel, kept for the norm and the product; it is
        owned by the layer before, but nothing else keeps it) plus (B, C)-sized factors, counted as 3 C."""
        return int(self.channels * spatial_numel + 3 * self.channels)
