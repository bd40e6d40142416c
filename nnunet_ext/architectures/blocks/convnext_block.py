"""ConvNeXt V2 block, dimension-agnostic: the spatial branch (and the tail of the frequency branch) of DeSamba's
SAMBlock.

Papers: Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders" (CVPR 2023); DeSamba
(arXiv 2507.15487), whose SAMBlock uses the block with a large (7) and a small (3) depthwise kernel.

What follows ConvNeXt V2 (C = channels):

* depthwise k x k (x k) conv, padding k // 2 -> LayerNorm over the channels (eps 1e-6) -> pointwise Linear C -> 4C
  -> GELU -> :class:`~nnunet_ext.architectures.blocks.grn.GRN` -> pointwise Linear 4C -> C -> stochastic depth ->
  ``x + branch``. No layer scale (V2 drops it in favour of GRN).
* The pointwise layers are ``nn.Linear`` on a channels-last view, as in the reference implementation; LayerNorm and
  GRN work on that view too.
* Init: truncated-normal(0.02) weights and zero biases for the convolution and the Linears (ConvNeXt's
  ``_init_weights``); GRN starts at zero.

What is chosen here: the depthwise conv comes from ``conv_op`` (nn.Conv2d / nn.Conv3d), so the block runs on 2D and
3D maps; LayerNorm runs in float32 whatever the autocast dtype (:class:`LayerNormFp32`), GRN accumulates its norms in
float32. ``mlp_ratio`` sets the expansion (paper: 4). Stochastic depth reuses dynamic-network-architectures'
``DropPath``.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunet_ext.architectures.blocks.grn import GRN
from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32


class ConvNeXtV2Block(nn.Module):
    """ConvNeXt V2 block (see the module docstring): x (B, C, *spatial) -> (B, C, *spatial), 2D and 3D.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d, for the depthwise convolution.
        kernel_size: k of the depthwise convolution (odd; SAMBlock: 7 and 3).
        mlp_ratio: hidden width of the pointwise MLP relative to C (paper: 4).
        drop_path: stochastic-depth probability of the branch.
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], kernel_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size output), got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.hidden = max(1, int(round(channels * mlp_ratio)))
        self.dwconv = conv_op(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = LayerNormFp32(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, self.hidden)
        self.act = nn.GELU()
        self.grn = GRN(self.hidden, channels_last=True)
        self.pwconv2 = nn.Linear(self.hidden, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """ConvNeXt's init: truncated-normal(0.02) weights, zero biases; unit LayerNorm; GRN at zero."""
        for m in (self.dwconv, self.pwconv1, self.pwconv2):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        self.grn.init_weights()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch: (B, C, *spatial) -> (B, C, *spatial), without stochastic depth."""
        y = self.dwconv(x).movedim(1, -1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return y.movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        return x + self.drop_path(self.branch(x))

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted). Per voxel, with h = hidden width: the depthwise output (C, kept by LayerNorm; a float32 copy under
        autocast) and LayerNorm's mean and inverse std (2), the LayerNorm output (C, input of the first Linear), the
        first Linear's output (h, kept by GELU), the GELU output (h, kept by GRN) and the GRN output (h, input of the
        second Linear) -> 2C + 2 + 3h (14C + 2 at ratio 4). Stochastic depth in training adds one per-sample
        factor."""
        return int(spatial_numel * (2 * self.channels + 2 + 3 * self.hidden) + 3 * self.hidden)
