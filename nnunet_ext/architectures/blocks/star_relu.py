"""StarReLU: ``s * relu(x)**2 + b`` with learnable scalars ``s`` and ``b``.

Paper: Yu et al., "MetaFormer Baselines for Vision" (arXiv 2210.13452, 2022); DFFormer (Tatsunami & Taki 2024) and
TexLiverNet's SFPM-f use it inside the dynamic filter. What follows the paper: one learnable scale and one learnable
bias for the whole tensor, initialised to s = 1, b = 0 (MetaFormer's "StarReLU" before its data-dependent re-init,
which is not used here). Elementwise, so any shape works: (B, C, *spatial), (B, N, C), ...

Chosen here: the scalars are cast to the input dtype, so a half-precision input gives a half-precision output (a
float32 parameter of shape (1,) would otherwise promote the result to float32). ``relu(x)**2`` overflows float16
for ``|x| > 255``: callers that may see such values compute it in float32 (:mod:`.frequency_perception` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StarReLU(nn.Module):
    """``s * relu(x)**2 + b``; x of any shape -> same shape and dtype. ``scale`` and ``bias`` have shape (1,)."""

    def __init__(self, scale_init: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.scale_init, self.bias_init = scale_init, bias_init
        self.scale = nn.Parameter(torch.full((1,), float(scale_init)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_init)))

    def init_weights(self) -> None:
        nn.init.constant_(self.scale, self.scale_init)
        nn.init.constant_(self.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * F.relu(x).square() + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale_init={self.scale_init}, bias_init={self.bias_init}"
