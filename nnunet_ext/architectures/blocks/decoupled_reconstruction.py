"""DRLM: DeSamba's decoupled representation learning module over the features of several MRI sequences.

Paper: DeSamba (arXiv 2507.15487; no public code). For the feature f_i of every sequence i (the fused SAMNet +
MambaOut feature):

* a unique part ``U_i = Enc_u_i(f_i)``, one encoder per sequence;
* a shared part ``S_ij = Enc_s(f_i, f_j)`` for every pair of sequences, one encoder shared by all pairs;
* self-reconstruction ``SRF_i = SDec_i(U_i, [S_ij])`` from the shared parts that involve i, cross-reconstruction
  ``CRF_i = CDec_i(U_i, [S_jk])`` from the shared parts that exclude i, both by L1 against f_i;
* total loss ``CE + 0.5 * L_self + 0.5 * L_cross`` (the caller weights the two losses returned here).

What is chosen here (h = ``hidden``, default C; n = number of sequences; convs from ``conv_op``, channel LayerNorm
in float32, so any spatial size and batch size work):

* ``Enc_u_i``: conv 3 x 3 (x 3) C -> h -> LayerNorm -> GELU -> conv 1 x 1 h -> h.
* ``Enc_s`` is symmetric by construction (DeepSets, Zaheer et al. 2017): ``S_ij = rho((e(f_i) + e(f_j)) / 2)``
  with ``e`` = conv 3 x 3 C -> h -> LayerNorm -> GELU and ``rho`` = conv 1 x 1 h -> h, so ``S_ij = S_ji`` exactly and
  the per-sequence embedding e is computed once per sequence, not once per pair.
* Self-reconstruction of i uses the mean of ``S_ij`` over the n - 1 pairs that contain i.
* Cross-reconstruction of i uses the mean of ``S_jk`` over the pairs without i when n >= 3. With two sequences no
  such pair exists; then it uses ``S_jj = Enc_s(f_j, f_j) = rho(e(f_j))``, the shared encoder applied to the other
  sequence alone: shared content computed without looking at f_i, which is what the cross term asks for.
* Decoders ``SDec_i`` / ``CDec_i`` (one per sequence each): ``[U_i, S]`` (2h) -> conv 1 x 1 -> h -> LayerNorm ->
  GELU -> conv 3 x 3 h -> C. They are built only when their loss is switched on.
* **Targets** are detached (``detach_target=True``): the reconstruction trains the DRLM and, through U and S, the
  encoder before it, but cannot lower its loss by shrinking f_i (a collapse a non-detached target allows).
  The L1 losses are means over elements and sequences, computed in float32.
* **Fused representation** for the classifier: ``[U_1, ..., U_n, mean over all pairs of S_ij]`` on the channel axis,
  (B, (n + 1) h, *spatial) = ``out_channels``; the caller pools it.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.architectures.blocks.channel_layer_norm import ChannelLayerNorm


def _conv_norm_act(conv_op: type[nn.Module], in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(conv_op(in_ch, out_ch, kernel_size, padding=kernel_size // 2), ChannelLayerNorm(out_ch),
                         nn.GELU())


def _encoder(conv_op: type[nn.Module], channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(*_conv_norm_act(conv_op, channels, hidden, 3), conv_op(hidden, hidden, 1))


def _decoder(conv_op: type[nn.Module], hidden: int, channels: int) -> nn.Sequential:
    return nn.Sequential(*_conv_norm_act(conv_op, 2 * hidden, hidden, 1), conv_op(hidden, channels, 3, padding=1))


class DecoupledReconstruction(nn.Module):
    """DRLM (see the module docstring).

    Args:
        channels: C of every sequence feature f_i.
        num_sequences: n >= 2.
        conv_op: nn.Conv2d / nn.Conv3d.
        hidden: h, the width of the unique and shared parts (default C).
        self_recon, cross_recon: build the self- / cross-reconstruction decoders and return their losses.
        detach_target: reconstruct ``f_i.detach()`` (default) instead of f_i.

    ``forward(feats)``: n tensors (B, C, *spatial) -> ``(fused, losses)``, fused (B, out_channels, *spatial) with
    ``out_channels = (n + 1) * h``, losses ``{"recon_self": scalar, "recon_cross": scalar}`` (float32, only the
    switched-on ones; none with ``with_losses=False``, which also skips the decoders).
    """

    def __init__(self, channels: int, num_sequences: int, conv_op: type[nn.Module], hidden: int | None = None,
                 self_recon: bool = True, cross_recon: bool = True, *, detach_target: bool = True):
        super().__init__()
        if num_sequences < 2:
            raise ValueError(f"DecoupledReconstruction needs at least 2 sequences (pairs of sequences define the "
                             f"shared parts), got {num_sequences}")
        n, h = num_sequences, hidden or channels
        self.channels, self.num_sequences, self.hidden = channels, n, h
        self.self_recon, self.cross_recon, self.detach_target = self_recon, cross_recon, detach_target
        self.pairs = tuple(itertools.combinations(range(n), 2))
        self.out_channels = (n + 1) * h
        self.unique_encoders = nn.ModuleList(_encoder(conv_op, channels, h) for _ in range(n))
        self.shared_embed = _conv_norm_act(conv_op, channels, h, 3)
        self.shared_proj = conv_op(h, h, 1)
        self.self_decoders = nn.ModuleList(_decoder(conv_op, h, channels) for _ in range(n)) if self_recon else None
        self.cross_decoders = nn.ModuleList(_decoder(conv_op, h, channels) for _ in range(n)) if cross_recon else None

    def shared(self, embeddings: list[torch.Tensor], i: int, j: int) -> torch.Tensor:
        """``S_ij = rho((e_i + e_j) / 2)`` from the per-sequence shared embeddings; ``S_ii = rho(e_i)``."""
        return self.shared_proj(embeddings[i] if i == j else 0.5 * (embeddings[i] + embeddings[j]))

    def forward(self, feats: list[torch.Tensor] | tuple[torch.Tensor, ...], *, with_losses: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = self.num_sequences
        if len(feats) != n:
            raise ValueError(f"expected {n} sequence features, got {len(feats)}")
        if any(f.shape != feats[0].shape for f in feats) or feats[0].shape[1] != self.channels:
            raise ValueError(f"sequence features must share one shape with {self.channels} channels, got "
                             f"{[tuple(f.shape) for f in feats]}")
        unique = [enc(f) for enc, f in zip(self.unique_encoders, feats)]
        embeddings = [self.shared_embed(f) for f in feats]
        shared = {(i, j): self.shared(embeddings, i, j) for i, j in self.pairs}
        fused = torch.cat((*unique, torch.stack(list(shared.values())).mean(0)), dim=1)
        losses: dict[str, torch.Tensor] = {}
        if not with_losses:
            return fused, losses
        targets = [f.detach() if self.detach_target else f for f in feats]
        if self.self_decoders is not None:
            rec = []
            for i, dec in enumerate(self.self_decoders):
                s = torch.stack([shared[p] for p in self.pairs if i in p]).mean(0)
                rec.append(self._l1(dec(torch.cat((unique[i], s), dim=1)), targets[i]))
            losses["recon_self"] = torch.stack(rec).mean()
        if self.cross_decoders is not None:
            rec = []
            for i, dec in enumerate(self.cross_decoders):
                if n == 2:
                    s = self.shared(embeddings, 1 - i, 1 - i)
                else:
                    s = torch.stack([shared[p] for p in self.pairs if i not in p]).mean(0)
                rec.append(self._l1(dec(torch.cat((unique[i], s), dim=1)), targets[i]))
            losses["recon_cross"] = torch.stack(rec).mean()
        return fused, losses

    @staticmethod
    def _l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(reconstruction.float(), target.float())

    def activation_elements(self, spatial_numel: int) -> int:
        """Elements kept for backward by one forward pass with the losses, per sample (the inputs, owned by the
        caller, are not counted). Per voxel, with h = hidden: every conv -> LayerNorm -> GELU unit keeps the conv
        output, LayerNorm's two statistics, its output and the GELU output (3h + 2); every sequence has two (its
        unique encoder and the shared embedding, whose GELU output is kept only where ``rho`` reads it alone: the
        cross term of two sequences); every pair keeps the mean embedding that ``rho`` reads (h); every decoder keeps
        ``[U_i, S]`` (2h), one unit (3h + 2) and its reconstruction (C, kept by the L1 loss)."""
        n, h, c = self.num_sequences, self.hidden, self.channels
        embedding_out = h if (n == 2 and self.cross_recon) else 0
        per_voxel = n * (3 * h + 2) + n * (2 * h + 2 + embedding_out) + len(self.pairs) * h
        decoders = n * (int(self.self_recon) + int(self.cross_recon))
        per_voxel += decoders * (5 * h + 2 + c)
        return int(spatial_numel * per_voxel)
