"""SFPM-s: TexLiverNet's spatial perception branch, a small dilated-convolution pyramid added as a scaled residual.

Paper: "TexLiverNet: Leveraging Medical Knowledge and Spatial-Frequency Perception for Enhanced Liver Tumor
Segmentation" (arXiv 2411.04595); released code (github sky-visionX/TexLiverNet, ``model/SFPM.py``, class
``sfpms``), used in parallel at the bottleneck as ``out + scale * sfpms(out)`` with a learnable scalar ``scale``
initialised to 0.01.

What follows the paper and its code (C = channels; every unit is conv 3x3 -> norm -> nonlin):

* ``x1 = unit(x)``: C -> C, dilation 1;
* ``d1 = unit(x1)``: C -> C/2, dilation 2;
* ``d2 = unit(d1)``: C/2 -> C/2, dilation 4;
* ``d3 = unit([d1, d2])``: C/2 + C/2 -> C, dilation 2;
* ``branch = unit([x1, d3])``: 2C -> C, dilation 1 (the "fusing conv on [x1, c]"; a 3x3 in the code, kept here);
* ``out = x + scale * branch``.

What is chosen here: nnU-Net's ``norm_op`` / ``nonlin`` (InstanceNorm, LeakyReLU in its plans) instead of the code's
BatchNorm / ReLU, in nnU-Net's conv -> norm -> nonlin order (the code's order too); the scalar ``scale`` lives in this
block (the code keeps it in the network). Dimension-agnostic: in 3D the convs are 3x3x3 with the same dilations
(the receptive field grows to 17 voxels per axis, so 3D bottlenecks smaller than that see zero padding).
For odd C the half width is C // 2 and ``[d1, d2]`` has 2 * (C // 2) channels.
"""

from __future__ import annotations

import torch
from torch import nn


class _ConvNormAct(nn.Module):
    def __init__(self, conv_op, in_ch: int, out_ch: int, dilation: int, norm_op, norm_op_kwargs, nonlin,
                 nonlin_kwargs):
        super().__init__()
        self.conv = conv_op(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.norm = norm_op(out_ch, **(norm_op_kwargs or {})) if norm_op is not None else nn.Identity()
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


class SpatialPerception(nn.Module):
    """SFPM-s (see the module docstring): x (B, C, *spatial) -> ``x + scale * branch(x)``, same shape, 2D and 3D.

    Args:
        channels: C (>= 2).
        conv_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: nnU-Net's op classes and their kwargs.
        init_scale: initial value of the learnable scalar ``scale`` (paper code: 0.01).
    """

    def __init__(self, channels: int, conv_op: type[nn.Module], norm_op: type[nn.Module] | None,
                 norm_op_kwargs: dict | None, nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None,
                 init_scale: float = 0.01):
        super().__init__()
        if channels < 2:
            raise ValueError(f"SpatialPerception needs at least 2 channels, got {channels}")
        half = channels // 2
        ops = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        self.channels, self.half = channels, half
        self.conv1 = _ConvNormAct(conv_op, channels, channels, 1, **ops)
        self.dconv1 = _ConvNormAct(conv_op, channels, half, 2, **ops)
        self.dconv2 = _ConvNormAct(conv_op, half, half, 4, **ops)
        self.dconv3 = _ConvNormAct(conv_op, 2 * half, channels, 2, **ops)
        self.fuse = _ConvNormAct(conv_op, 2 * channels, channels, 1, **ops)
        self.inplace_nonlin = bool((nonlin_kwargs or {}).get("inplace", False))
        self.init_scale = init_scale
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def init_weights(self) -> None:
        nn.init.constant_(self.scale, self.init_scale)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled pyramid: (B, C, *spatial) -> (B, C, *spatial)."""
        x1 = self.conv1(x)
        d1 = self.dconv1(x1)
        d2 = self.dconv2(d1)
        d3 = self.dconv3(torch.cat((d1, d2), dim=1))
        return self.fuse(torch.cat((x1, d3), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        return x + self.scale.to(x.dtype) * self.branch(x)

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted). Per voxel, with nnU-Net's in-place nonlin: every unit keeps its conv output (norm input) and its
        nonlin output (2 per output channel: C, C/2, C/2, C, C), plus the two concatenations (C and 2C)
        -> 2 * (3C + 2 * C/2) + 3C ~= 11 C; the branch output kept for ``scale`` is the last nonlin output. A nonlin
        that is not in place keeps its input instead, and x1, d1 and the branch output are then kept by their
        consumers as well: + 2.5 C."""
        c, h = self.channels, self.half
        extra = 0 if self.inplace_nonlin else 2 * c + h
        return int(spatial_numel * (2 * (3 * c + 2 * h) + 2 * h + 2 * c + extra))
