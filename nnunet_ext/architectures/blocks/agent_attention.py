"""TIA: TexLiverNet's text-image agent attention, image tokens attending to text tokens through a few agent tokens.

Papers: TexLiverNet (arXiv 2411.04595; the module exists only in the paper, the released code has no text path);
Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention" (ECCV 2024) for the agents;
FasterNet's partial convolution (:mod:`.partial_conv`) for the diversity path.

What follows the paper (C = channels, h = heads, d = C / h, n image tokens, a agents, T text tokens):

* Q from the image features: 1x1 conv + a learnable positional encoding; K, V from the text token features plus a
  learnable positional encoding over token positions;
* agents ``A = AdaptiveAvgPool(Q)`` to an ``agents`` x ``agents`` grid (agent attention: 49 = 7 x 7);
* agent aggregation ``V_A = softmax(A K^T / sqrt(d)) V`` (a x d), then broadcast ``O = softmax(Q A^T / sqrt(d)) V_A``
  (n x d): cost O(n a + a T) per head instead of the O(n T) of plain cross-attention; multi-head; an output
  projection;
* diversity recovery ``f_S = O + PWConv(PConv(f))``, returned as is (no extra residual: the caller decides whether
  ``f_S`` replaces ``f`` or is added to it).

What is chosen here (the paper leaves it open):

* **Text path**: the incoming (frozen-encoder) embeddings (B, T, text_dim) are LayerNorm'd (encoders differ in scale:
  PubMedBERT, BiomedCLIP, Qwen3-Embedding), projected by a Linear text_dim -> C, given the positional encoding
  (``max_text_tokens`` rows, truncated-normal 0.02), then one Linear C -> 2C gives K and V.
* **Positional encoding of Q**: stored on a ``pos_grid``^dims grid (default 8) and interpolated (bi/tri-linearly) to
  the feature size, so any patch size works.
* **Masking**: ``text_mask`` (B, T), True = real token. Padded positions get a logit of -inf in the agent softmax and
  their embeddings are zeroed before the text path, so their values (even NaN) cannot change the output.
* **No text**: a learned token ``no_text`` (1, 1, text_dim) is always prepended to the text tokens; it is the only
  valid key of a sample without text (``text=None``, an all-False mask, or text dropped by ``text_dropout`` in
  training) and masked out otherwise, so it is in the graph of every forward pass (its gradient is then exactly
  zero) and DDP sees every parameter used. It gets no positional encoding.
* **Numerics**: both softmaxes and the products around them run in float32 with autocast off (agent weights are
  (B, h, a, T), image-to-agent weights (B, h, n, a): small enough not to need fused kernels); the projections follow
  autocast. ``dropout`` applies to the output projection (agent attention's ``proj_drop``).
* **Agents in 3D**: an ``agents``^3 grid, each side at most the feature size; in 2D likewise ``agents``^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_ext.architectures.blocks.partial_conv import PartialConv
from nnunet_ext.architectures.blocks.temporal_transformer import LayerNormFp32, autocast_off


class TextImageAgentAttention(nn.Module):
    """TIA (see the module docstring).

    Args:
        channels: C (divisible by ``heads``).
        text_dim: width of the text embeddings.
        conv_op: nn.Conv2d / nn.Conv3d.
        heads: h.
        agents: agent grid side (agents^dims agents, each side capped at the feature size).
        text_dropout: probability, per sample and in training only, of replacing its text by the no-text token.
        max_text_tokens: rows of the text positional encoding (longer texts are an error).
        dropout: dropout after the output projection.
        pos_grid: side of the grid the image positional encoding is stored on.

    ``forward(f, text=None, text_mask=None)``: f (B, C, *spatial), text (B, T, text_dim), text_mask (B, T) bool
    (None: every token real) -> f_S (B, C, *spatial).
    """

    def __init__(self, channels: int, text_dim: int, conv_op: type[nn.Module], heads: int = 4, agents: int = 7,
                 text_dropout: float = 0.0, max_text_tokens: int = 64, dropout: float = 0.0, *, pos_grid: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} must be divisible by heads {heads}")
        if not 0.0 <= text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be a probability, got {text_dropout}")
        self.dims = convert_conv_op_to_dim(conv_op)
        self.channels, self.text_dim, self.heads, self.agents = channels, text_dim, heads, agents
        self.text_dropout, self.max_text_tokens, self.pos_grid = text_dropout, max_text_tokens, pos_grid
        self.q = conv_op(channels, channels, 1)
        self.q_pos = nn.Parameter(torch.zeros(1, channels, *([pos_grid] * self.dims)))
        self.text_norm = LayerNormFp32(text_dim)
        self.text_proj = nn.Linear(text_dim, channels)
        self.text_pos = nn.Parameter(torch.zeros(1, max_text_tokens, channels))
        self.kv = nn.Linear(channels, 2 * channels)
        self.no_text = nn.Parameter(torch.zeros(1, 1, text_dim))
        self.proj = conv_op(channels, channels, 1)
        self.proj_drop = nn.Dropout(dropout)
        self.pconv = PartialConv(channels, conv_op)
        self.pwconv = conv_op(channels, channels, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal(0.02) Linears (zero bias), positional encodings and no-text token; unit LayerNorm. The
        convolutions keep PyTorch's default (nnU-Net's He init re-initialises them when applied)."""
        for lin in (self.text_proj, self.kv):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for p in (self.q_pos, self.text_pos, self.no_text):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.ones_(self.text_norm.weight)
        nn.init.zeros_(self.text_norm.bias)

    # ------------------------------------------------------------------ pieces
    def _q_pos(self, spatial: tuple[int, ...]) -> torch.Tensor:
        if spatial == tuple(self.q_pos.shape[2:]):
            return self.q_pos
        mode = "bilinear" if self.dims == 2 else "trilinear"
        return F.interpolate(self.q_pos, size=spatial, mode=mode, align_corners=False)

    def text_tokens(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int):
        """Key/value tokens (B, 1 + T, C) -- token 0 is the no-text token -- and their validity (B, 1 + T) bool."""
        if text is None:
            text = self.no_text.new_zeros(batch, 0, self.text_dim)
            text_mask = torch.zeros(batch, 0, dtype=torch.bool, device=self.no_text.device)
        else:
            if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.text_dim:
                raise ValueError(f"text must be (B={batch}, T, {self.text_dim}), got {tuple(text.shape)}")
            if text.shape[1] > self.max_text_tokens:
                raise ValueError(f"{text.shape[1]} text tokens exceed max_text_tokens={self.max_text_tokens}")
            if text_mask is None:
                text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            elif text_mask.shape != text.shape[:2]:
                raise ValueError(f"text_mask must be {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
            text_mask = text_mask.to(device=text.device, dtype=torch.bool)
        has_text = text_mask.any(dim=1)
        if self.training and self.text_dropout > 0:
            has_text = has_text & (torch.rand(batch, device=has_text.device) >= self.text_dropout)
        valid = text_mask & has_text[:, None]
        text = torch.where(valid[..., None], text.to(self.no_text.dtype), 0.0)  # padded values never enter
        tokens = self.text_proj(self.text_norm(text)) + self.text_pos[:, :text.shape[1]]
        no_text = self.text_proj(self.text_norm(self.no_text)).expand(batch, -1, -1)
        tokens = torch.cat((no_text.to(tokens.dtype), tokens), dim=1)
        return tokens, torch.cat((~has_text[:, None], valid), dim=1)

    def _attend(self, q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        """Agent attention, float32. q (B, h, n, d), a (B, h, a, d), k and v (B, h, T', d), key_mask (B, T') ->
        (B, h, n, d) float32. The plain cross-attention baseline of ``benchmarks/texlivernet_blocks.py`` overrides
        this method."""
        scale = q.shape[-1] ** -0.5
        with autocast_off(q.device.type):
            a = a.float() * scale
            logits = a @ k.float().transpose(-2, -1)  # (B, h, a, T')
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            agent_v = torch.softmax(logits, dim=-1) @ v.float()  # (B, h, a, d)
            weights = torch.softmax(q.float() @ a.transpose(-2, -1), dim=-1)  # (B, h, n, a)
            return weights @ agent_v

    # ------------------------------------------------------------------ forward
    def forward(self, f: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        if f.shape[1] != self.channels or f.ndim != self.dims + 2:
            raise ValueError(f"expected (B, {self.channels}, {self.dims} spatial axes), got {tuple(f.shape)}")
        b, c, *spatial = f.shape
        spatial = tuple(spatial)
        h, d = self.heads, c // self.heads
        q = self.q(f)
        q = q + self._q_pos(spatial).to(q.dtype)
        pool = F.adaptive_avg_pool2d if self.dims == 2 else F.adaptive_avg_pool3d
        agents = pool(q, [min(self.agents, s) for s in spatial])
        tokens, key_mask = self.text_tokens(text, text_mask, b)
        k, v = self.kv(tokens).chunk(2, dim=-1)
        q_h = q.flatten(2).view(b, h, d, -1).transpose(-2, -1)  # (B, h, n, d)
        a_h = agents.flatten(2).view(b, h, d, -1).transpose(-2, -1)  # (B, h, a, d)
        k_h, v_h = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in (k, v))  # (B, h, T', d)
        o = self._attend(q_h, a_h, k_h, v_h, key_mask.to(q.device))
        o = o.transpose(-2, -1).reshape(b, c, *spatial).to(q.dtype)
        return self.proj_drop(self.proj(o)) + self.pwconv(self.pconv(f))

    def activation_elements(self, spatial_numel: int, text_tokens: int) -> int:
        """Elements kept for backward by one forward pass, per sample (the input, owned by the caller, is not
        counted; float32 attention weights count as one element each).

        Per voxel: Q (C, kept by the pooling and the product with the agents), the image-to-agent weights (h * a),
        the attention output in (B, C, *spatial) layout (C, projection input), the PConv output (C, pointwise-conv
        input) and the float32 copy of Q made under autocast (C; counted always: nnU-Net trains with autocast, in
        float32 this over-counts by C). Per text token (plus the no-text token): LayerNorm
        input and output (2 text_dim), the projected tokens and K, V (3C); per agent a few C.
        """
        c, h = self.channels, self.heads
        n_agents = min(self.agents ** self.dims, spatial_numel)
        per_voxel = 4 * c + h * n_agents
        if self.training and self.proj_drop.p > 0:
            per_voxel += c
        per_token = 2 * self.text_dim + 3 * c + h * n_agents
        per_agent = 4 * c
        return int(spatial_numel * per_voxel + (text_tokens + 1) * per_token + n_agents * per_agent)
