"""Gated CNN block of MambaOut, dimension-agnostic: DeSamba's 3D MambaOut branch.

Papers: Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?" (2024), the Gated CNN block (Mamba's block
without its state-space model); DeSamba (arXiv 2507.15487) runs a 3D MambaOut next to SAMNet for every sequence.
timm's MambaOut is 2D only; this file is written for both, in pure PyTorch (no mamba-ssm).

What follows MambaOut (C = channels, h = int(expansion * C), c = int(conv_ratio * C)):

* LayerNorm over the channels (eps 1e-6) -> Linear C -> 2h -> split into the gate g (h), an identity part (h - c)
  and a conv part (c);
* depthwise k x k (x k) conv (padding k // 2) on the conv part;
* ``Linear(GELU(g) * [identity, conv])`` h -> C -> stochastic depth -> ``x + branch``;
* defaults k = 7, expansion 8/3, conv_ratio 1.0; truncated-normal(0.02) weights and zero biases (timm's init for
  MambaOut), no layer scale: the last Linear is *not* zero-initialised, so the block does not start as the identity.

What is chosen here: the block takes and returns nnU-Net's channels-first (B, C, *spatial) layout and works
channels-last inside (as MambaOut does); the depthwise conv comes from ``conv_op`` (2D or 3D); LayerNorm runs in
float32 under autocast. Stochastic depth reuses dynamic-network-architectures' ``DropPath``.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32


class GatedCNNBlock(nn.Module):
    """MambaOut's Gated CNN block (see the module docstring): x (B, C, *spatial) -> (B, C, *spatial), 2D and 3D.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d, for the depthwise convolution.
        kernel_size: k of the depthwise convolution (odd; MambaOut: 7).
        expansion: h / C (MambaOut: 8/3).
        conv_ratio: c / C, the channels that go through the convolution (MambaOut: 1.0); needs c <= h.
        drop_path: stochastic-depth probability of the branch.
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], kernel_size: int = 7, expansion: float = 8 / 3,
                 conv_ratio: float = 1.0, *, drop_path: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        self.channels = channels
        self.hidden = int(expansion * channels)
        self.conv_channels = int(conv_ratio * channels)
        if not 0 < self.conv_channels <= self.hidden:
            raise ValueError(f"conv channels ({self.conv_channels}) must be in [1, hidden = {self.hidden}]")
        self.split_sizes = (self.hidden, self.hidden - self.conv_channels, self.conv_channels)
        self.norm = LayerNormFp32(channels, eps=1e-6)
        self.fc1 = nn.Linear(channels, 2 * self.hidden)
        self.act = nn.GELU()
        self.conv = conv_op(self.conv_channels, self.conv_channels, kernel_size, padding=kernel_size // 2,
                            groups=self.conv_channels)
        self.fc2 = nn.Linear(self.hidden, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """MambaOut (timm) init: truncated-normal(0.02) weights and zero biases; unit LayerNorm."""
        for m in (self.fc1, self.conv, self.fc2):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch: (B, C, *spatial) -> (B, C, *spatial), without stochastic depth."""
        g, i, c = torch.split(self.fc1(self.norm(x.movedim(1, -1))), self.split_sizes, dim=-1)
        c = self.conv(c.movedim(-1, 1)).movedim(1, -1)
        return self.fc2(self.act(g) * torch.cat((i, c), dim=-1)).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        return x + self.drop_path(self.branch(x))

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted). Per voxel: LayerNorm's mean and inverse std (2), its output (C, input of fc1), fc1's output (2h; the
        gate is kept by GELU and the conv part by the conv, from the same storage), the GELU output (h) and
        ``[identity, conv]`` (h) kept by the product, and the product (h, input of fc2) -> C + 2 + 5h. Under
        autocast LayerNorm also keeps a float32 copy of the input (+C, not counted here)."""
        return int(spatial_numel * (self.channels + 2 + 5 * self.hidden))
