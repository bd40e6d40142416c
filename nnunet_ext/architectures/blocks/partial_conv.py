"""Partial convolution (PConv): a k x k convolution on a fraction of the channels, the others passed through.

Paper: Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks" (FasterNet, CVPR 2023).
TexLiverNet (arXiv 2411.04595) uses it in the diversity-recovery path of its text-image agent attention (TIA).
What follows the paper: the first ``round(C * ratio)`` channels (ratio 1/4 by default) go through a k x k
convolution with C_p -> C_p channels, no bias and "same" padding; the remaining channels are returned unchanged and
the two parts are concatenated in their original order, so x (B, C, *spatial) -> (B, C, *spatial).

Chosen here: dimension-agnostic through ``conv_op`` (nn.Conv2d or nn.Conv3d, k x k x k kernels in 3D); at least one
and at most C channels are convolved (``round`` could give 0 for very narrow inputs).
"""

from __future__ import annotations

import torch
from torch import nn


class PartialConv(nn.Module):
    """k x k conv on the first ``conv_channels = round(C * ratio)`` channels; the rest untouched.

    Args:
        channels: C, input and output channels.
        conv_op: nn.Conv2d / nn.Conv3d.
        ratio: fraction of the channels convolved (FasterNet: 1/4).
        kernel_size: k (odd), "same" padding.

    ``forward(x)``: x (B, C, *spatial) -> (B, C, *spatial); ``out[:, conv_channels:]`` equals ``x[:, conv_channels:]``.
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], ratio: float = 0.25, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.channels = channels
        self.conv_channels = min(channels, max(1, round(channels * ratio)))
        self.conv = conv_op(self.conv_channels, self.conv_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        if self.conv_channels == self.channels:
            return self.conv(x)
        head, tail = x.split((self.conv_channels, self.channels - self.conv_channels), dim=1)
        return torch.cat((self.conv(head), tail), dim=1)

