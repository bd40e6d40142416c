"""Temporal transformer over phase tokens: the Temporal Dynamics Modeler of STD-Net.

Paper: "Spatio-temporal decoupling network for multiphasic liver lesion characterization", npj Digital Medicine 2025
(no public code). What follows the paper: tokens ``Z0 = [F_cls; F_1; ...; F_N] + E_pos`` with a learnable CLS token
and a learnable phase positional embedding ``E_pos`` of shape (N+1, C); L layers of multi-head self-attention + FFN
(ReLU), each sub-layer with a residual connection and a normalisation; defaults L=6, h=8, C=768.

What is chosen here (the paper leaves it open):

* **Tokenisation** is the caller's business: STD-Net feeds one sequence of N+1 tokens per bottleneck location
  (TimeSformer's divided temporal attention), so the cost is linear in volume.
* **Pre-norm** by default (``norm_first=True``: ``x + MHSA(LN(x))``, ``x + FFN(LN(x))``, a final LayerNorm), as in ViT
  and TimeSformer: it trains stably without warm-up and keeps the fp32 residual stream bounded under AMP.
  ``norm_first=False`` gives the original post-norm transformer.
* **Numerics**: LayerNorm runs in float32 whatever the autocast dtype; attention goes through
  :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels keep the softmax in float32). Only when the
  weights are requested is attention computed explicitly, with the softmax in float32.
* **Init** (TimeSformer): truncated-normal(0.02) for linear layers, CLS token and positional embedding; the output
  projection of the attention of every block after the first is zero, so the stack starts close to the identity.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

# CUDA fused-attention kernels launch one block row per (sequence, head); very long batches are split
_MAX_SDPA_BATCH = 32768


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Fused attention on (S, h, T, d), split along S when S is very large."""
    if q.shape[0] <= _MAX_SDPA_BATCH:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + _MAX_SDPA_BATCH], k[i:i + _MAX_SDPA_BATCH],
                                                     v[i:i + _MAX_SDPA_BATCH], dropout_p=dropout_p)
                      for i in range(0, q.shape[0], _MAX_SDPA_BATCH)])


def autocast_off(device_type: str):
    """A context that switches autocast off on ``device_type`` (a no-op context where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # device types without autocast (e.g. "meta", used for memory estimates)
        return contextlib.nullcontext()


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 (also under fp16/bf16 autocast); returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_off(x.device.type):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class PhaseSelfAttention(nn.Module):
    """Multi-head self-attention over a short token sequence.

    ``forward(x)``: x (S, T, D) -> (S, T, D), and the weights (S, h, T, T) (float32) when ``return_weights``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"temporal_dim {dim} must be divisible by temporal_heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        s, t, d = x.shape
        q, k, v = self.qkv(x).view(s, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = None
        if return_weights:
            scale = (d // self.heads) ** -0.5
            weights = torch.softmax((q.float() * scale) @ k.float().transpose(-2, -1), dim=-1)
            out = (weights @ v.float()).to(v.dtype)
        else:
            out = _sdpa(q, k, v, self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(s, t, d)), weights


class TemporalBlock(nn.Module):
    """One transformer layer: MHSA + FFN(ReLU), residual around each, pre- or post-norm.

    x (S, T, D) -> (S, T, D) [, attention weights (S, h, T, T)].
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, norm_first: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = LayerNormFp32(dim)
        self.attn = PhaseSelfAttention(dim, heads, dropout)
        self.norm2 = LayerNormFp32(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        if self.norm_first:
            a, w = self.attn(self.norm1(x), return_weights)
            x = x + a
            return x + self.mlp(self.norm2(x)), w
        a, w = self.attn(x, return_weights)
        x = self.norm1(x + a)
        return self.norm2(x + self.mlp(x)), w


class TemporalTransformer(nn.Module):
    """CLS token + learnable phase positional embedding + ``depth`` :class:`TemporalBlock` s.

    Args:
        in_features: width of the incoming phase tokens (projected to ``dim`` by a linear layer if different).
        num_phases: N; the positional embedding has N+1 rows (row 0: CLS).
        dim, depth, heads, mlp_ratio, dropout, norm_first: transformer hyper-parameters (paper: 768, 6, 8, 4, -, -).

    ``forward(tokens)``: tokens (S, N, in_features), S independent sequences (e.g. batch x locations) ->
    (S, N+1, dim), token 0 being CLS; with ``return_attention`` also a list (one per layer) of (S, h, N+1, N+1)
    float32 weights whose rows sum to 1.
    """

    def __init__(self, in_features: int, num_phases: int, dim: int = 768, depth: int = 6, heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, norm_first: bool = True):
        super().__init__()
        self.num_phases, self.dim, self.heads = num_phases, dim, heads
        self.mlp_ratio, self.norm_first = mlp_ratio, norm_first
        self.proj_in = nn.Linear(in_features, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_phases + 1, dim))
        self.blocks = nn.ModuleList([TemporalBlock(dim, heads, mlp_ratio, dropout, norm_first) for _ in range(depth)])
        self.norm = LayerNormFp32(dim) if norm_first else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """TimeSformer-style init (see module docstring). Called at construction and by ``STDNet.initialize``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks[1:]:
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.attn.proj.bias)

    def forward(self, tokens: torch.Tensor, return_attention: bool = False):
        s, n, _ = tokens.shape
        if n != self.num_phases:
            raise ValueError(f"expected {self.num_phases} phase tokens per sequence, got {n}")
        x = self.proj_in(tokens)
        x = torch.cat((self.cls_token.expand(s, -1, -1).to(x.dtype), x), dim=1) + self.pos_embed
        weights = []
        for block in self.blocks:
            x, w = block(x, return_attention)
            weights.append(w)
        x = self.norm(x)
        return (x, weights) if return_attention else x

    def activation_elements(self, num_sequences: int) -> int:
        """Elements kept for backward by one forward pass over ``num_sequences`` sequences (memory model).

        Per layer (pre-norm): the residual stream twice (LayerNorm inputs), both LayerNorm outputs, q/k/v, the
        attention output, the FFN hidden activation (ReLU output) -> (8 + mlp_ratio) * T * D, plus the input
        projection's input and output and the final norm.
        """
        t = self.num_phases + 1
        per_layer = (8 + self.mlp_ratio) * t * self.dim
        io = self.num_phases * (self.proj_in.in_features + self.dim) + 2 * t * self.dim
        return int(num_sequences * (len(self.blocks) * per_layer + io))
