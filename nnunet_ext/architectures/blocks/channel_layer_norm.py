"""LayerNorm over the channel axis of a channels-first (B, C, *spatial) tensor, computed in float32.

ConvNeXt's ``LayerNorm(data_format="channels_first")`` (Liu et al., "A ConvNet for the 2020s", CVPR 2022), written
here on top of :class:`~nnunet_ext.architectures.blocks.temporal_transformer.LayerNormFp32`: every position is
normalised over its C channels, so it works for any batch size and any spatial size (down to one voxel, where
InstanceNorm cannot normalise), 2D and 3D alike, and in float32 under fp16/bf16 autocast.
"""

from __future__ import annotations

import torch

from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32


class ChannelLayerNorm(LayerNormFp32):
    """LayerNorm over axis 1: x (B, C, *spatial) -> same shape and dtype. ``normalized_shape`` is C."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward per sample: the input (C per voxel; a float32 copy of it under autocast; the
        input is counted because the layer before does not keep its output) and the per-position mean and inverse
        standard deviation (2 per voxel)."""
        return int(spatial_numel * (self.normalized_shape[0] + 2))
