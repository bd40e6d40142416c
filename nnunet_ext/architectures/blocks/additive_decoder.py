"""A U-Net decoder whose skips are added, not concatenated, with interpolation upsampling (TexLiverNet's decoder).

TexLiverNet (arXiv 2411.04595) decodes like Rolling-UNet: the lower-resolution features are upsampled bilinearly by
x2, brought to the skip's width and **added** to the skip, then refined by two (conv, norm, non-linearity) blocks.
Here: upsampling by interpolation to the skip's exact size (``bilinear`` in 2D, ``trilinear`` in 3D; any stride the
nnU-Net plans give), a 1x1 convolution to the skip's width, the sum, then nnU-Net's ``StackedConvBlocks`` with the
plans' kernel sizes, norm and non-linearity; a 1x1 segmentation layer per stage for deep supervision (always built,
so that weights load with and without it), highest resolution first, as dynamic-network-architectures' UNetDecoder.

Shapes: ``forward(skips)`` with ``skips[l]`` (B, C_l, *S_l) from the encoder (bottleneck last) -> logits
(B, num_classes, *S_0), or the deep-supervision list.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn


class AdditiveSkipDecoder(nn.Module):
    """Args: ``encoder`` (exposes ``output_channels``, ``strides``, ``kernel_sizes``, ``conv_op``, ``conv_bias``,
    ``norm_op(_kwargs)``, ``dropout_op(_kwargs)``, ``nonlin(_kwargs)``, as dynamic-network-architectures' encoders do),
    ``num_classes``, ``n_conv_per_stage`` (int or one per decoder stage), ``deep_supervision``."""

    def __init__(self, encoder: nn.Module, num_classes: int, n_conv_per_stage, deep_supervision: bool,
                 nonlin_first: bool = False):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder_strides = [list(s) if isinstance(s, (list, tuple)) else [s] for s in encoder.strides]
        widths = list(encoder.output_channels)
        n = len(widths)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n - 1)
        if len(n_conv_per_stage) != n - 1:
            raise ValueError(f"n_conv_per_stage needs {n - 1} entries (encoder stages - 1), got {n_conv_per_stage}")
        conv_op = encoder.conv_op
        self.mode = "trilinear" if conv_op is nn.Conv3d else "bilinear"
        self.skip_widths = widths[:-1]
        self.projections = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for s in range(1, n):
            below, skip = widths[-s], widths[-(s + 1)]
            self.projections.append(conv_op(below, skip, 1, 1, 0, bias=True))
            self.stages.append(StackedConvBlocks(
                n_conv_per_stage[s - 1], conv_op, skip, skip, encoder.kernel_sizes[-(s + 1)], 1, encoder.conv_bias,
                encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op, encoder.dropout_op_kwargs,
                encoder.nonlin, encoder.nonlin_kwargs, nonlin_first))
            self.seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))

    def forward(self, skips: list[torch.Tensor]):
        x = skips[-1]
        outputs = []
        for s, (project, stage) in enumerate(zip(self.projections, self.stages)):
            skip = skips[-(s + 2)]
            up = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
            x = stage(project(up) + skip)
            if self.deep_supervision or s == len(self.stages) - 1:
                outputs.append(self.seg_layers[s](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's unit (one element per conv output) for an encoder input of ``input_size``: per stage the
        upsampled map, its projection and the sum, the stage's convs and its segmentation output."""
        sizes, size = [], list(input_size)
        for stride in self.encoder_strides:
            stride = stride if len(stride) == len(size) else stride * len(size)
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        total = 0
        for s, stage in enumerate(self.stages):
            level = sizes[-(s + 2)]
            vox = int(np.prod(level, dtype=np.int64))
            total += 3 * vox * self.skip_widths[-(s + 1)]
            total += int(stage.compute_conv_feature_map_size(level))
            if self.deep_supervision or s == len(self.stages) - 1:
                total += vox * self.seg_layers[s].out_channels
        return total
