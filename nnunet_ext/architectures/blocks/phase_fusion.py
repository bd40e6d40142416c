"""Light temporal fusion of skip connections (an option of STD-Net, not part of the paper).

The paper ("Spatio-temporal decoupling network for multiphasic liver lesion characterization", npj Digital Medicine
2025) models time only at the bottleneck and decodes the reference phase with the reference phase's skips. These
blocks let the skips see the other phases too, at a cost linear in volume. Both start as the identity on the
reference phase (zero-initialised), so switching them on does not change the network at initialisation.

Input everywhere: the skip features of all phases, (B, N, C, *spatial); output: (B, C, *spatial).
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32


class PhaseWeighting(nn.Module):
    """``F_ref + sum_n w[n, c] * (F_n - F_ref)``: a learned per-channel mix of the phases, w = 0 at init."""

    def __init__(self, channels: int, num_phases: int, reference: int):
        super().__init__()
        self.reference = reference
        self.weight = nn.Parameter(torch.zeros(num_phases, channels))

    def init_weights(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(feats.dtype)
        ref = feats[:, self.reference]
        mixed = torch.einsum("bnc...,nc->bc...", feats, w)  # no (B, N, C, *S) temporary
        keep = (1 - w.sum(0)).view(1, -1, *([1] * (feats.ndim - 3)))
        return ref * keep + mixed

    def activation_elements(self, num_phases: int, num_voxels_times_channels: int) -> int:
        return int(2 * num_voxels_times_channels)


class ReferencePhaseAttention(nn.Module):
    """Single-head attention per location from the reference phase (query) to all phases (keys/values):
    ``F_ref + W_o softmax(q k^T / sqrt(C)) v`` with LayerNorm'd tokens and a learnable phase embedding; ``W_o = 0``
    at init. Weights are computed explicitly in float32 (sequence length N <= 6: nothing to fuse)."""

    def __init__(self, channels: int, num_phases: int, reference: int):
        super().__init__()
        self.reference = reference
        self.norm = LayerNormFp32(channels)
        self.phase_embed = nn.Parameter(torch.zeros(num_phases, channels))
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        self.init_weights()

    def init_weights(self) -> None:
        for lin in (self.q, self.kv):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.trunc_normal_(self.phase_embed, std=0.02)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, c = feats.shape[:3]
        spatial = feats.shape[3:]
        tokens = feats.flatten(3).permute(0, 3, 1, 2)  # (B, L, N, C)
        tokens = self.norm(tokens) + self.phase_embed.to(tokens.dtype)
        q = self.q(tokens[:, :, self.reference])  # (B, L, C)
        k, v = self.kv(tokens).chunk(2, dim=-1)  # (B, L, N, C) each
        logits = torch.einsum("blc,blnc->bln", q.float(), k.float()) * c ** -0.5
        out = torch.einsum("bln,blnc->blc", torch.softmax(logits, -1), v.float()).to(v.dtype)
        delta = self.proj(out).transpose(1, 2).reshape(b, c, *spatial)
        return feats[:, self.reference] + delta

    def activation_elements(self, num_phases: int, num_voxels_times_channels: int) -> int:
        """tokens, normalised tokens, k and v for every phase, q, the attention output and the projection."""
        return int((4 * num_phases + 4) * num_voxels_times_channels)
