"""SAMBlock: the dual-branch (spatial + spectral) block SAMNet is built from in DeSamba, for 2D and 3D.

Paper: DeSamba (arXiv 2507.15487; no public code). SAMNet stacks 3, 4, 6, 3 SAMBlocks.

What follows the paper (C = channels):

* spatial branch ``F1`` = ConvNeXt V2 block with the large depthwise kernel (7);
* frequency branch ``F2`` = SAMB (:class:`~nnunet_ext.architectures.blocks.spectral_modulation.
  SpectralAdaptiveModulation`) -> 3 x 3 (x 3) conv -> ConvNeXt V2 block with the small depthwise kernel (3);
* fusion ``F = theta([F1, F2]) * (alpha * F1 + beta * F2)`` with a dynamic gate ``theta`` and learnable alpha, beta;
* output ``0.5 * x + 0.5 * F`` (the residual and the high-level part weighted 0.5 each).

What is chosen here:

* **Gate** ``theta``: selective-kernel style (Li et al., SKNet, 2019): global average pool of F1 and F2 (2C, in
  float32), Linear 2C -> h (h = max(8, C // 4)) -> GELU -> Linear h -> C -> sigmoid; one weight per sample and
  channel. ``alpha`` and ``beta`` are scalars initialised to 1, so the block starts as
  ``0.5 x + 0.5 sigmoid(.) (F1 + F2)``, about the mean of the input and the two branches' average.
* **The 3 x 3 conv** between SAMB and the ConvNeXt block is a plain (dense) C -> C conv with bias and kernel
  ``small_kernel`` (3 by default; the notes' "3x3 conv"); ``depthwise_frequency_conv=True`` makes it depthwise (C
  times fewer weights; 27 C^2 against 27 C in 3D).
* **Memory**: the fused output is computed as ``0.5 x + (0.5 theta alpha) F1 + (0.5 theta beta) F2`` (the same
  expression), so autograd keeps F1 and F2 and small (B, C) factors, not their weighted sum as well.
* ``spectral=False`` is the paper's ``_noSpectral`` ablation (SAMNet without the frequency branch): no SAMB, no
  3 x 3 conv, no second ConvNeXt block, no gate and no alpha/beta; ``F = F1``, output ``0.5 x + 0.5 F1``.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.architectures.blocks.convnext_block import ConvNeXtV2Block
from nnunet_ext.architectures.blocks.spectral_modulation import SpectralAdaptiveModulation
from nnunet_ext.architectures.blocks.temporal_transformer import autocast_off


class SAMBlock(nn.Module):
    """SAMBlock (see the module docstring): x (B, C, *spatial) -> (B, C, *spatial), 2D and 3D.

    Args:
        channels: C.
        conv_op: nn.Conv2d / nn.Conv3d.
        small_kernel: depthwise kernel of the frequency branch's ConvNeXt block (and the size of its 3 x 3 conv).
        large_kernel: depthwise kernel of the spatial branch's ConvNeXt block.
        spectral: build the frequency branch and the gate (False: the ``_noSpectral`` ablation).
        mlp_ratio, drop_path: passed to both ConvNeXt V2 blocks.
        depthwise_frequency_conv: make the conv after SAMB depthwise instead of dense.
        gate_hidden: hidden width of the gate MLP (default max(8, C // 4)).
        num_bands: radial bands of SAMB's modulator.
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], small_kernel: int = 3, large_kernel: int = 7,
                 spectral: bool = True, *, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 depthwise_frequency_conv: bool = False, gate_hidden: int | None = None, num_bands: int = 4):
        super().__init__()
        self.channels, self.spectral = channels, spectral
        self.spatial_branch = ConvNeXtV2Block(channels, conv_op, large_kernel, mlp_ratio, drop_path)
        if spectral:
            self.samb = SpectralAdaptiveModulation(channels, conv_op, num_bands=num_bands)
            groups = channels if depthwise_frequency_conv else 1
            self.freq_conv = conv_op(channels, channels, small_kernel, padding=small_kernel // 2, groups=groups)
            self.freq_block = ConvNeXtV2Block(channels, conv_op, small_kernel, mlp_ratio, drop_path)
            hidden = gate_hidden or max(8, channels // 4)
            self.gate = nn.Sequential(nn.Linear(2 * channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
            self.alpha = nn.Parameter(torch.ones(()))
            self.beta = nn.Parameter(torch.ones(()))

    def init_weights(self) -> None:
        """Re-initialise the branches (ConvNeXt / SAMB init); ``alpha = beta = 1``."""
        self.spatial_branch.init_weights()
        if self.spectral:
            self.samb.init_weights()
            self.freq_block.init_weights()
            nn.init.ones_(self.alpha)
            nn.init.ones_(self.beta)

    def frequency_branch(self, x: torch.Tensor) -> torch.Tensor:
        """F2: SAMB -> conv -> ConvNeXt V2 block; (B, C, *spatial) -> (B, C, *spatial)."""
        return self.freq_block(self.freq_conv(self.samb(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        f1 = self.spatial_branch(x)
        if not self.spectral:
            return 0.5 * x + 0.5 * f1
        f2 = self.frequency_branch(x)
        axes = tuple(range(2, x.ndim))
        shape = (x.shape[0], self.channels) + (1,) * len(axes)
        with autocast_off(x.device.type):
            pooled = torch.cat((f1.mean(dim=axes, dtype=torch.float32), f2.mean(dim=axes, dtype=torch.float32)), dim=1)
            theta = 0.5 * torch.sigmoid(self.gate(pooled))  # (B, C), with the output's 0.5
            c1 = (theta * self.alpha.float()).to(x.dtype).view(shape)
            c2 = (theta * self.beta.float()).to(x.dtype).view(shape)
        return 0.5 * x + c1 * f1 + c2 * f2

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted): the spatial ConvNeXt block; with ``spectral``, SAMB, the conv's input (SAMB's output, C per voxel),
        the conv's output (input of the second ConvNeXt block, C), that block, and F1 and F2 kept by the fusion
        (2C)."""
        total = self.spatial_branch.activation_elements(spatial_numel)
        if self.spectral:
            total += self.samb.activation_elements(spatial_numel) + self.freq_block.activation_elements(spatial_numel)
            total += 4 * self.channels * spatial_numel
        return int(total)
