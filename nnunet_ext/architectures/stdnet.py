"""STD-Net: spatio-temporal decoupling network for multiphasic lesion segmentation and characterisation.

Paper: "Spatio-temporal decoupling network for multiphasic liver lesion characterization", npj Digital Medicine 2025
(no public code). Built from nnU-Net's pieces: the encoder (plain or residual) and the decoder of
dynamic-network-architectures, topology from the nnU-Net plans.

::

    x (B, N*c, Z, Y, X)  --fold phases into batch-->  (B*N, c, Z, Y, X)
                                    |
                 shared spatial encoder E (one call, nnU-Net topology)
                                    |
      skips_l (B*N, C_l, S_l)  ...  bottleneck (B*N, C_b, S_b)
           |                                 |  tokens per location: (B*L_b, N, C_b) -> Linear -> (B*L_b, N, D)
           | reference phase                 v
           | (or skip fusion)       [CLS; F_1..F_N] + E_pos   (B*L_b, N+1, D)
           |                        Transformer x L (pre-norm MHSA + FFN(ReLU))
           |                           |                        |
           |                   token of reference phase        CLS, pooled over locations (B, D)
           |                   Linear D->C_b (zero init)        |
           |                   + F_ref  (residual)              ClassificationHead (512, dropout 0.3)
           v                           v                        v
      nnU-Net UNetDecoder(skips of the reference phase, contextualised bottleneck)   "cls" (B, K)
           v
      segmentation logits (deep supervision: list, highest resolution first)

Follows the paper: shared-weight 3D encoder applied to every phase; Transformer over ``[CLS; F_1..F_N] + E_pos``
(learnable CLS and phase embedding, MHSA + FFN(ReLU), residual + normalisation, L=6, h=8, C=768 by default); U-Net
decoder with skips decoding the reference (portal venous) phase; CLS -> MLP(512, dropout 0.3) characterisation head;
works for N=1 (single-phase LiTS/MSD).

Chosen here (the paper is silent): one token sequence per bottleneck location (TimeSformer's divided temporal
attention: linear in volume); pre-norm; linear projections between the encoder width and D; the decoder receives
``F_ref + proj_out(z_ref)`` with ``proj_out`` zero-initialised, so at initialisation STD-Net is exactly an nnU-Net
U-Net on the reference phase and the temporal modeler is learned as a residual; skips come from the reference phase
(``skip_fusion="none"``, the paper's design and the cheapest; ``"weights"`` and ``"attention"`` add a light
temporal fusion per level, see :mod:`~nnunet_ext.architectures.blocks.phase_fusion`). The paper classifies
lesion-centred inputs; nnU-Net patches hold a whole organ, so when the metadata names lesion labels
(``cls_pool_channels``) the CLS tokens are pooled over locations weighted by the network's own (detached) lesion
probability, see :func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`; otherwise by their mean.

Ablations (constructor arguments): ``temporal="mean"`` (no temporal modeler: parameter-free mean over phases at the
bottleneck for both decoder and head: invariant to any phase permutation), ``temporal="convgru"``
(:class:`~nnunet_ext.architectures.blocks.conv_gru.ConvGRU` over phases at the bottleneck; the decoder gets
``F_ref + conv1x1(h_N)``, the head the pooled final hidden state ``h_N`` instead of CLS), ``share_weights=False``
(one encoder per phase, called in a Python loop over phases: separate weights cannot share one batched call, and a
grouped-conv encoder would need re-implementing every block and norm).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn

from nnunet_ext.architectures.blocks.conv_gru import ConvGRU, ConvGRUCell
from nnunet_ext.architectures.blocks.heads import ClassificationHead, lesion_weighted_pool
from nnunet_ext.architectures.blocks.phase_fusion import PhaseWeighting, ReferencePhaseAttention
from nnunet_ext.architectures.blocks.temporal_transformer import TemporalTransformer
from nnunet_ext.architectures.contract import ContractNetwork, HeadsOutput, register_architecture

TEMPORAL_KINDS = ("transformer", "mean", "convgru")
SKIP_FUSIONS = {"none": None, "weights": PhaseWeighting, "attention": ReferencePhaseAttention}
ENCODERS = ("plain", "residual")
# nnU-Net's compute_conv_feature_map_size counts one element per convolution output, while training keeps about 2.5
# elements per counted one (conv output, norm output, ...; measured for PlainConvUNet on CPU in fp32). Token and
# recurrent activations are counted as real elements and divided by this, so that every term of
# STDNet.compute_conv_feature_map_size is in the unit nnU-Net's planner reference values are calibrated in.
ELEMENTS_PER_UNIT = 2.5
STDNET_CLASS_NAME = "nnunet_ext.architectures.stdnet.STDNet"
# temporal settings used when the plans are not STD-Net plans (the paper's defaults)
PAPER_TEMPORAL_SETTINGS = {"temporal": "transformer", "temporal_depth": 6, "temporal_heads": 8, "temporal_dim": 768}


class STDNet(ContractNetwork):
    """STD-Net (see module docstring). Constructor follows nnU-Net: ``STDNet(input_channels, num_classes,
    **plans_arch_kwargs, deep_supervision=...)``; every argument is JSON-serialisable (ops as dotted names in plans).

    Args:
        input_channels: N phases x c channels per phase, phase-major (channel ``n*c + j`` = channel j of phase n).
        num_classes: segmentation outputs.
        n_stages ... nonlin_kwargs, n_conv_per_stage_decoder, nonlin_first: nnU-Net topology (plans arch_kwargs).
            The residual encoder reads ``n_blocks_per_stage``, the plain one ``n_conv_per_stage``.
        deep_supervision: nnU-Net's switch (``self.decoder.deep_supervision``).
        encoder: "plain" | "residual"; None: "residual" if ``n_blocks_per_stage`` is given, else "plain".
        num_cls_classes: K case-level classes; 0 builds no head ("cls" is then None).
        num_phases: N; None: ``input_channels`` (one channel per phase).
        reference_phase: index of the decoded phase; None: 1 (portal venous in arterial/portal venous/delayed order)
            for N > 1, else 0.
        temporal: "transformer" | "mean" | "convgru" (see module docstring).
        temporal_depth, temporal_heads, temporal_dim, temporal_mlp_ratio, temporal_dropout, temporal_norm_first:
            transformer hyper-parameters (paper: 6, 8, 768, 4).
        skip_fusion: "none" | "weights" | "attention".
        share_weights: one encoder for all phases (paper) or one per phase (ablation).
        convgru_hidden: ConvGRU hidden width (None: bottleneck width).
        cls_hidden, cls_dropout: characterisation head (paper: 512, 0.3). STD-Net consumes no case inputs (the paper
            uses none); tabular features go to the early-fusion baseline.
        cls_activation: the head MLP's non-linearity, "leaky_relu" (default), "relu" or "gelu" (see
            :class:`~nnunet_ext.architectures.blocks.heads.ClassificationHead`).
        cls_pool_channels: segmentation channels of the lesion labels. The head's CLS tokens are then aggregated
            over bottleneck locations weighted by the predicted lesion probability
            (:func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`); None: the mean over locations.

    ``forward(x)``: x (B, N*c, Z, Y, X) (or 2D) -> logits (B, num_classes, Z, Y, X), a list under deep supervision.
    ``forward(x, return_heads=True[, return_attention=True][, lesion_mask=(B, 1, *S)])`` ->
    :class:`~nnunet_ext.architectures.contract.HeadsOutput` with ``seg``, ``cls`` (B, K) or None, no auxiliary
    losses and, with ``return_attention``, ``extras["attention"]``: the last temporal layer's weights
    (B, L_b, h, N+1, N+1) (L_b bottleneck locations in C order, token 0 = CLS, rows sum to 1; None unless
    ``temporal="transformer"``). ``lesion_mask``: pool the head's CLS tokens with this (ground-truth)
    lesion mask instead of the predicted lesion probability (training, see
    :func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`).

    ``auxiliary_modules``: the modules nnU-Net's U-Net does not have; the trainers optimise them with AdamW
    (:mod:`nnunet_ext.trainers.optim`), the encoder and decoder with nnU-Net's SGD.
    """

    auxiliary_modules = ("temporal", "temporal_out", "skip_fusion", "cls_head")

    @classmethod
    def from_plans(cls, network_class_name: str, arch_kwargs: dict, settings, input_channels: int, num_classes: int,
                   deep_supervision: bool, **overrides) -> STDNet:
        """STD-Net for a configuration of any nnU-Net plans: ``STDNetPlans*`` (``nnunet-ext plan-and-preprocess -pl
        STDNetPlanner``) carry the temporal settings; the U-Net topology of vanilla or ResEnc plans gets the
        paper's temporal defaults (:data:`PAPER_TEMPORAL_SETTINGS`). Phases, reference phase, classes and lesion
        labels always come from ``settings`` (the dataset metadata)."""
        from nnunet_ext.architectures.blocks.heads import lesion_pool_channels

        kwargs = dict(arch_kwargs)
        if network_class_name != STDNET_CLASS_NAME:
            kwargs = {**kwargs, "encoder": "residual" if "n_blocks_per_stage" in kwargs else "plain",
                      **PAPER_TEMPORAL_SETTINGS}
        kwargs.update(num_phases=settings["num_phases"], reference_phase=settings["reference_phase_index"],
                      num_cls_classes=settings["num_cls_classes"], cls_activation=settings["cls_activation"],
                      cls_pool_channels=lesion_pool_channels(settings["lesion_labels"], num_classes),
                      deep_supervision=deep_supervision)
        kwargs.update(overrides)
        net = cls(input_channels, num_classes, **kwargs)
        net.apply(net.initialize)
        return net

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage=2, n_conv_per_stage_decoder=2, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, n_blocks_per_stage=None, encoder: str | None = None,
                 num_cls_classes: int = 3, num_phases: int | None = None, reference_phase: int | None = None,
                 temporal: str = "transformer", temporal_depth: int = 6, temporal_heads: int = 8,
                 temporal_dim: int = 768, temporal_mlp_ratio: float = 4.0, temporal_dropout: float = 0.0,
                 temporal_norm_first: bool = True, skip_fusion: str = "none", share_weights: bool = True,
                 convgru_hidden: int | None = None, cls_hidden: int = 512, cls_dropout: float = 0.3,
                 nonlin_first: bool = False, cls_pool_channels: list[int] | None = None,
                 cls_activation: str = "leaky_relu"):
        super().__init__()
        n = input_channels if num_phases is None else int(num_phases)
        if n < 1 or input_channels % n:
            raise ValueError(f"input_channels={input_channels} is not num_phases={n} times channels per phase")
        ref = (1 if n > 1 else 0) if reference_phase is None else int(reference_phase)
        if not 0 <= ref < n:
            raise ValueError(f"reference_phase={ref} is not a phase index (num_phases={n})")
        if temporal not in TEMPORAL_KINDS:
            raise ValueError(f"temporal={temporal!r}; choose one of {TEMPORAL_KINDS}")
        if skip_fusion not in SKIP_FUSIONS:
            raise ValueError(f"skip_fusion={skip_fusion!r}; choose one of {tuple(SKIP_FUSIONS)}")
        encoder = encoder or ("residual" if n_blocks_per_stage is not None else "plain")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r}; choose one of {ENCODERS}")
        self.num_phases, self.channels_per_phase, self.reference_phase = n, input_channels // n, ref
        self.temporal_kind, self.share_weights, self.encoder_kind = temporal, share_weights, encoder
        self.cls_pool_channels = list(cls_pool_channels) if cls_pool_channels else None

        common = dict(n_stages=n_stages, features_per_stage=features_per_stage, conv_op=conv_op,
                      kernel_sizes=kernel_sizes, strides=strides, conv_bias=conv_bias, norm_op=norm_op,
                      norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs,
                      nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, return_skips=True)
        if encoder == "plain":
            make = partial(PlainConvEncoder, n_conv_per_stage=n_conv_per_stage, nonlin_first=nonlin_first, **common)
        else:
            blocks = n_blocks_per_stage if n_blocks_per_stage is not None else n_conv_per_stage
            make = partial(ResidualEncoder, n_blocks_per_stage=blocks, **common)
        if share_weights:
            self.encoder = make(self.channels_per_phase)
            ref_encoder = self.encoder
        else:
            self.encoder = nn.ModuleList([make(self.channels_per_phase) for _ in range(n)])
            ref_encoder = self.encoder[ref]
        self.decoder = UNetDecoder(ref_encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        widths = list(ref_encoder.output_channels)
        c_b = widths[-1]

        self.temporal = self.temporal_out = None
        if temporal == "transformer":
            self.temporal = TemporalTransformer(c_b, n, temporal_dim, temporal_depth, temporal_heads,
                                                temporal_mlp_ratio, temporal_dropout, temporal_norm_first)
            self.temporal_out = nn.Linear(temporal_dim, c_b)
            head_in = temporal_dim
        elif temporal == "convgru":
            hidden = convgru_hidden or c_b
            self.temporal = ConvGRU(conv_op, c_b, hidden, ref_encoder.kernel_sizes[-1])
            self.temporal_out = conv_op(hidden, c_b, 1)
            head_in = hidden
        else:
            head_in = c_b
        fusion = SKIP_FUSIONS[skip_fusion]
        self.skip_fusion = nn.ModuleList([fusion(w, n, ref) for w in widths[:-1]]) if fusion else None
        self.cls_head = ClassificationHead(head_in, num_cls_classes, cls_hidden, cls_dropout, 0,
                                           cls_activation) if num_cls_classes > 0 else None
        self._zero_init_temporal_out()

    # ------------------------------------------------------------------ forward
    def _phase_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, N*c, *S) -> encoder features per level, (B, N, C_l, *S_l) each (views when weights are shared)."""
        b, n, c = x.shape[0], self.num_phases, self.channels_per_phase
        if x.shape[1] != n * c:
            raise ValueError(f"STD-Net was built for {n} phase(s) x {c} channel(s); got {x.shape[1]} channels")
        if self.share_weights:
            return [f.unflatten(0, (b, n)) for f in self.encoder(x.reshape(b * n, c, *x.shape[2:]))]
        per_phase = [enc(x[:, i * c:(i + 1) * c]) for i, enc in enumerate(self.encoder)]
        return [torch.stack(level, dim=1) for level in zip(*per_phase)]

    def _temporal_context(self, f: torch.Tensor, return_attention: bool = False):
        """Bottleneck f (B, N, C_b, *S_b) -> decoder input (B, C_b, *S_b), head features per location (B, F, *S_b)
        (CLS tokens, the fused mean or the ConvGRU state), and with
        ``return_attention`` a list (one per layer) of (B, L_b, h, N+1, N+1) attention weights (else None)."""
        b, n, c = f.shape[:3]
        spatial = f.shape[3:]
        ref = f[:, self.reference_phase]
        if self.temporal_kind == "mean":
            ctx = f.mean(1)
            return ctx, ctx, None
        if self.temporal_kind == "convgru":
            h = self.temporal(f)
            return ref + self.temporal_out(h), h, None
        tokens = f.flatten(3).permute(0, 3, 1, 2).reshape(-1, n, c)  # (B*L_b, N, C_b)
        locations = tokens.shape[0] // b
        out = self.temporal(tokens, return_attention)
        z, weights = out if return_attention else (out, None)
        delta = self.temporal_out(z[:, 1 + self.reference_phase]).unflatten(0, (b, locations))
        cls_feat = z[:, 0].unflatten(0, (b, locations)).transpose(1, 2).reshape(b, -1, *spatial)
        ctx = ref + delta.transpose(1, 2).reshape(b, c, *spatial)
        if weights is not None:
            weights = [w.unflatten(0, (b, locations)) for w in weights]
        return ctx, cls_feat, weights

    def _reference_skips(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.skip_fusion is None:
            return [f[:, self.reference_phase] for f in feats]
        return [fuse(f) for fuse, f in zip(self.skip_fusion, feats)]

    def forward(self, x: torch.Tensor, return_heads: bool = False, return_attention: bool = False,
                lesion_mask: torch.Tensor | None = None):
        feats = self._phase_features(x)
        ctx, cls_feat, weights = self._temporal_context(feats[-1], return_attention and return_heads)
        seg = self.decoder(self._reference_skips(feats[:-1]) + [ctx])
        if not return_heads:
            return seg
        cls = None
        if self.cls_head is not None:
            cls = self.cls_head(lesion_weighted_pool(cls_feat, seg, self.cls_pool_channels, lesion_mask))
        extras = {"attention": weights[-1] if weights else None} if return_attention else {}
        return HeadsOutput(seg, cls, {}, extras)

    # ------------------------------------------------------------------ interpretability
    def temporal_attention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every temporal layer, (B, L_b, h, N+1, N+1) each (float32; token 0 = CLS).
        Runs the encoder and the temporal modeler only. Requires ``temporal="transformer"``."""
        if self.temporal_kind != "transformer":
            raise ValueError(f"temporal={self.temporal_kind!r} has no attention weights")
        return self._temporal_context(self._phase_features(x)[-1], True)[2]

    def phase_attention_maps(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """CLS-to-phase attention of one layer, averaged over heads, on the bottleneck grid: (B, N, *S_b).
        Each location's N weights sum to at most 1 (the rest goes to CLS itself). Upsample (e.g.
        ``F.interpolate(maps, size=x.shape[2:], mode="trilinear")``) and mask with a lesion to plot per lesion."""
        return self.cls_attention_maps(self.temporal_attention(x)[layer], x.shape[2:])

    def cls_attention_maps(self, weights: torch.Tensor, input_size) -> torch.Tensor:
        """One layer's attention weights (B, L_b, h, N+1, N+1), as ``forward(..., return_attention=True)`` or
        :meth:`temporal_attention` return them for an input of spatial size ``input_size`` -> the CLS-to-phase
        attention averaged over heads on the bottleneck grid, (B, N, *S_b)."""
        w = weights[:, :, :, 0, 1:].mean(2)  # (B, L_b, N)
        spatial = self._level_sizes(input_size)[-1]
        return w.transpose(1, 2).reshape(w.shape[0], self.num_phases, *spatial)

    # ------------------------------------------------------------------ nnU-Net hooks
    def _encoders(self) -> list[nn.Module]:
        return [self.encoder] if self.share_weights else list(self.encoder)

    def _level_sizes(self, input_size) -> list[list[int]]:
        sizes, size = [], list(input_size)
        for stride in self._encoders()[0].strides:
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        return sizes

    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's planner unit (feature-map elements per sample, see :data:`ELEMENTS_PER_UNIT`): N encoder passes
        + one decoder pass + token / recurrent / skip-fusion activations. Parameters, gradients and optimizer state
        are not counted (as in nnU-Net, whose reference values absorb them)."""
        enc = self._encoders()[0]
        n = self.num_phases
        units = n * int(enc.compute_conv_feature_map_size(input_size))
        units += int(self.decoder.compute_conv_feature_map_size(input_size))
        level_elems = [int(np.prod(s, dtype=np.int64)) * w for s, w in zip(self._level_sizes(input_size),
                                                                             enc.output_channels)]
        vox_b = int(np.prod(self._level_sizes(input_size)[-1], dtype=np.int64))
        extra = 0  # unshared encoders: same activations; their stacked per-phase copies are freed before backward
        if self.temporal_kind == "transformer":
            extra += self.temporal.activation_elements(vox_b) + 2 * n * level_elems[-1]  # + token copy, ctx
        elif self.temporal_kind == "convgru":
            extra += self.temporal.activation_elements(n, vox_b) + 2 * level_elems[-1]
        else:
            extra += level_elems[-1]
        if self.skip_fusion is not None:
            extra += sum(fuse.activation_elements(n, e) for fuse, e in zip(self.skip_fusion, level_elems[:-1]))
        return int(units + extra / ELEMENTS_PER_UNIT)

    def _zero_init_temporal_out(self) -> None:
        if self.temporal_out is not None:
            nn.init.zeros_(self.temporal_out.weight)
            nn.init.zeros_(self.temporal_out.bias)

    def initialize(self, module: nn.Module) -> None:
        """For ``net.apply(net.initialize)`` (nnU-Net; children are visited before parents): He init of every
        convolution as in nnU-Net (plus zero last norm of residual blocks), then the blocks' own inits (transformer:
        truncated normal, TimeSformer zero projections; ConvGRU: Xavier) and the zero temporal output projection."""
        InitWeights_He(1e-2)(module)
        if self.encoder_kind == "residual":
            init_last_bn_before_add_to_0(module)
        if isinstance(module, (TemporalTransformer, ConvGRU, ConvGRUCell, PhaseWeighting, ReferencePhaseAttention)):
            module.init_weights()
        if isinstance(module, STDNet):
            module._zero_init_temporal_out()


register_architecture(
    "stdnet", STDNet, dims=(2, 3),
    variants={"noTemporal": {"temporal": "mean"}, "noWeightSharing": {"share_weights": False},
              "ConvGRU": {"temporal": "convgru"}},
    plans_network_class=STDNET_CLASS_NAME,
    tiny_arch_kwargs={"encoder": "plain", "temporal": "transformer", "temporal_depth": 1, "temporal_heads": 2,
                      "temporal_dim": 32, "skip_fusion": "none", "share_weights": True},
    description="STD-Net (npj Digital Medicine 2025): shared encoder per phase, Transformer over phases, U-Net "
                "decoder of the reference phase, lesion-type head")
