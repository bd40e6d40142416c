"""DeSamba: decoupled spectral adaptive network for multi-sequence MRI lesion classification, in nnU-Net's conventions.

Paper: "DeSamba: Decoupled Spectral Adaptive Framework for 3D Multi-Sequence MRI Lesion Classification", arXiv
2507.15487 (no public code; evaluated on private spinal metastasis / spondylitis data). As far as we know this is the
first implementation, and it runs inside nnU-Net's fingerprinting, preprocessing, 5-fold CV and prediction.

::

    x (B, n*c, *S)   one input channel (c of them) per MRI sequence, sequence-major
      |                                                        \\
      |  per sequence i (own weights):                          light path (all channels, nnU-Net plain convs):
      |    SAMNet:   stem/downsample -> SAMBlock x d_j          levels 0 .. k-1 (full resolution and the
      |    MambaOut: stem/downsample -> GatedCNNBlock x e_j     strides before the SAMNet stem)
      |    f_i^j = MultiScaleFusion(SAMNet^j, MambaOut^j)       |
      v    (j = 0 .. m-1: the deepest m planned levels)         |
    skips: levels 0..k-1 from the light path; level k+j: 1x1 conv([f_1^j .. f_n^j]) -> LayerNorm
      |                                                         |
      |  nnU-Net's UNetDecoder (transposed convs, skips, 1 conv per stage, 1x1 seg layers)
      v
    segmentation logits (a list under deep supervision)  <- forward(x); the lesion ROI at inference
      .
      .  forward(x, return_heads=True, tabular=..., lesion_mask=...) also runs:
      .
    DRLM(f_1^{m-1} .. f_n^{m-1}) -> [U_1 .. U_n, mean_ij S_ij]   + aux losses recon_self, recon_cross (L1)
      |  pooled over the bottleneck, weighted by the lesion (predicted; the ground truth in training steps)
      |  ++ TabularEncoder(clinical features)
      v
    ClassificationHead (MLP) -> class logits (B, K)

What follows the paper: a dual-branch encoder per sequence (SAMNet: stages of SAMBlocks, 3-4-6-3 in the paper, each a
ConvNeXt-V2 spatial branch with a large (7) depthwise kernel and a frequency branch SAMB -> 3x3 conv -> ConvNeXt-V2
block with a small (3) kernel, fused by a dynamic gate; a 3D MambaOut branch of Gated CNN blocks, no state-space
model), a multi-scale fusion of the two branches into f_i, the decoupled representation learning module (unique
encoder per sequence, shared encoder on sequence pairs, self- and cross-reconstruction decoders, L1 losses weighted
0.5 each by the trainer), a tabular encoder for clinical features and a classifier on the fused representation. The
blocks live in :mod:`nnunet_ext.architectures.blocks` (one concept per file, each documenting its own choices).

Chosen here (the paper is silent, or nnU-Net needs it):

* **Topology from the plans.** The network has one level per planned stage (``strides``), so nnU-Net's deep
  supervision targets match. SAMNet / MambaOut occupy the deepest ``m = min(len(depths), n_stages - 1)`` levels;
  their stem is a patchify convolution (kernel = stride, as ConvNeXt's) whose stride is the product of the planned
  strides up to the first SAMNet level, and every later stage starts with LayerNorm + a kernel = stride convolution
  (ConvNeXt's downsampling). With fewer planned levels than SAMNet stages the deepest stages are dropped.
* **Light segmentation path.** The ``k = n_stages - m`` shallow levels come from nnU-Net's ``PlainConvEncoder`` on all
  channels (``light_convs`` convs per stage), the decoder is nnU-Net's ``UNetDecoder`` with ``decoder_convs`` convs
  per stage; widths ``min(decoder_width * 2^l, decoder_max_width)``. The SAMNet levels reach the decoder through a
  1x1 conv of the sequences' concatenated f_i^j plus channel LayerNorm. The decoder segments the lesion ROI, keeps
  nnU-Net's pipeline and gives the weights of the head's pooling.
* **DRLM on the deepest level** (f_i = the last fused stage), hidden width ``drlm_hidden``; with a single sequence
  there are no pairs and the DRLM is left out (the classifier then reads f_1).
* **Classifier input**: the DRLM's ``[U_1 .. U_n, mean S]`` (without DRLM: ``[f_1 .. f_n]``) pooled over the
  bottleneck weighted by the lesion probability (:func:`~nnunet_ext.architectures.blocks.heads.lesion_weighted_pool`:
  nnU-Net patches are larger than the paper's lesion ROIs), concatenated with the tabular embedding, then the
  MLP of :class:`~nnunet_ext.architectures.blocks.heads.ClassificationHead`.
* **Separate weights per sequence** for SAMNet and MambaOut (the paper's per-sequence encoders); one sequence after
  the other, so activations are those of n single-sequence encoders.
* **Initialisation**: nnU-Net's He init for every convolution, then each block's own (ConvNeXt / MambaOut truncated
  normal, zero GRN and SAMB modulation, zero fusion output).
* **Numerics**: FFTs in float32 with explicit output sizes, LayerNorm and GRN statistics in float32 (in the blocks);
  3D as in the paper, 2D at no extra cost.

Size presets (:data:`PRESETS`) tiny / small / base set widths, depths and the DRLM, decoder and head widths.
``base`` has the paper's SAMNet stage depths (3, 4, 6, 3), MambaOut-T's depths (3, 3, 9, 3) and widths 80-640, chosen
so that three sequences give about the paper's 433.82M parameters (437M, ``docs/desamba.md``); ``small`` (96M) is
under a quarter of it with every component kept; ``tiny`` (about 7M) is for CPU runs and tests. The ablations are
constructor switches (registered variants): ``noDRLM`` (``drlm=False``), ``noSpectral`` (SAMNet without its
frequency branch), ``noMambaOut``, ``noTabular``, ``noSelfRecon``, ``noCrossRecon``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_ext.architectures.blocks.branch_fusion import MultiScaleFusion
from nnunet_ext.architectures.blocks.channel_layer_norm import ChannelLayerNorm
from nnunet_ext.architectures.blocks.decoupled_reconstruction import DecoupledReconstruction
from nnunet_ext.architectures.blocks.gated_cnn import GatedCNNBlock
from nnunet_ext.architectures.blocks.heads import ClassificationHead, lesion_pool_channels, lesion_weighted_pool
from nnunet_ext.architectures.blocks.sam_block import SAMBlock
from nnunet_ext.architectures.blocks.tabular_encoder import TabularEncoder
from nnunet_ext.architectures.contract import ContractNetwork, HeadsOutput, register_architecture

DESAMBA_CLASS_NAME = "nnunet_ext.architectures.desamba.DeSamba"
# nnU-Net counts one element per conv output; block activations (counted as real elements by each block's
# activation_elements) are divided by this to be in its unit (the calibration of STD-Net and TexLiverNet)
ELEMENTS_PER_UNIT = 2.5
PAPER_PARAMS = 433.82e6
PAPER_GFLOPS = 308.32
DEFAULT_PRESET = "small"  # for plans that are not DeSamba plans (nnU-Net's U-Net topology)

# widths / depths per SAMNet stage; MambaOut uses the same widths (its features are fused with SAMNet's per scale)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "mamba_depths": [1, 1, 1, 1], "drlm_hidden": 32,
             "decoder_width": 16, "decoder_max_width": 64, "tabular_width": 32, "cls_hidden": 64},
    "small": {"widths": [40, 80, 160, 320], "depths": [2, 2, 6, 2], "mamba_depths": [2, 2, 6, 2],
              "drlm_hidden": 128, "decoder_width": 32, "decoder_max_width": 256, "tabular_width": 64,
              "cls_hidden": 256},
    "base": {"widths": [80, 160, 320, 640], "depths": [3, 4, 6, 3], "mamba_depths": [3, 3, 9, 3],
             "drlm_hidden": 256, "decoder_width": 32, "decoder_max_width": 320, "tabular_width": 64,
             "cls_hidden": 512},
}
PRESET_ORDER = ("base", "small", "tiny")  # largest first (the planner's search order)


def _as_list(v, dims: int) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (list, tuple)) else [int(v)] * dims


class SequenceEncoder(nn.Module):
    """One sequence's dual-branch encoder: SAMNet and MambaOut stages side by side, fused per scale.

    ``forward(x)`` (B, c, *S) -> list of m features f^j (B, widths[j], *S_j), shallowest first.

    Args:
        in_channels: c, the channels of one sequence.
        conv_op: nn.Conv2d / nn.Conv3d.
        strides: m per-axis strides: the stem's (product of the planned strides up to the first SAMNet level), then
            one per later stage.
        widths, depths, mamba_depths: per stage.
        spectral: SAMBlocks with their frequency branch (False: ``noSpectral``).
        mambaout: build the MambaOut branch and the fusion (False: ``noMambaOut``; f^j is SAMNet's feature).
        small_kernel, large_kernel, mamba_kernel, mlp_ratio, mamba_expansion, num_bands, drop_path: block settings.
    """

    def __init__(self, in_channels: int, conv_op: type[nn.Module], strides: list[list[int]], widths: list[int],
                 depths: list[int], mamba_depths: list[int], *, spectral: bool = True, mambaout: bool = True,
                 small_kernel: int = 3, large_kernel: int = 7, mamba_kernel: int = 7, mlp_ratio: float = 4.0,
                 mamba_expansion: float = 8 / 3, num_bands: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.widths, self.strides = list(widths), [list(s) for s in strides]
        self.mambaout = mambaout
        total = sum(depths) + (sum(mamba_depths) if mambaout else 0)
        rates = iter(np.linspace(0.0, drop_path, max(total, 1)).tolist())
        self.sam_down = self._downsampling(in_channels, conv_op)
        self.sam_stages = nn.ModuleList(
            nn.Sequential(*[SAMBlock(w, conv_op, small_kernel, large_kernel, spectral, mlp_ratio=mlp_ratio,
                                     drop_path=next(rates), num_bands=num_bands) for _ in range(d)])
            for w, d in zip(widths, depths))
        if mambaout:
            self.mamba_down = self._downsampling(in_channels, conv_op)
            self.mamba_stages = nn.ModuleList(
                nn.Sequential(*[GatedCNNBlock(w, conv_op, mamba_kernel, mamba_expansion, drop_path=next(rates))
                                for _ in range(d)])
                for w, d in zip(widths, mamba_depths))
            self.fusions = nn.ModuleList(MultiScaleFusion(w, conv_op) for w in widths)
        else:
            self.mamba_down = self.mamba_stages = self.fusions = None

    def _downsampling(self, in_channels: int, conv_op: type[nn.Module]) -> nn.ModuleList:
        """ConvNeXt's layout: a patchify stem (conv kernel = stride, then LayerNorm), and LayerNorm + conv kernel =
        stride before every later stage."""
        layers = [nn.Sequential(conv_op(in_channels, self.widths[0], self.strides[0], self.strides[0]),
                                ChannelLayerNorm(self.widths[0]))]
        for j in range(1, len(self.widths)):
            layers.append(nn.Sequential(ChannelLayerNorm(self.widths[j - 1]),
                                        conv_op(self.widths[j - 1], self.widths[j], self.strides[j], self.strides[j])))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, a, b = [], x, x
        for j, (down, stage) in enumerate(zip(self.sam_down, self.sam_stages)):
            a = stage(down(a))
            if self.mambaout:
                b = self.mamba_stages[j](self.mamba_down[j](b))
                feats.append(self.fusions[j](a, b))
            else:
                feats.append(a)
        return feats

    def activation_elements(self, level_numel: list[int]) -> int:
        """Elements kept for backward per sample, ``level_numel[j]`` voxels at stage j: per branch the downsampling
        (conv output and LayerNorm, about 2 widths + 2 per voxel) and the blocks, plus the fusion."""
        total = 0
        for j, v in enumerate(level_numel):
            w = self.widths[j]
            branches = 2 if self.mambaout else 1
            total += branches * (2 * w + 2) * v
            total += sum(blk.activation_elements(v) for blk in self.sam_stages[j])
            if self.mambaout:
                total += sum(blk.activation_elements(v) for blk in self.mamba_stages[j])
                total += self.fusions[j].activation_elements(v)
        return int(total)


class _DecoderSpec:
    """What nnU-Net's ``UNetDecoder`` reads from its encoder (widths, strides, kernels, ops), for DeSamba's levels. A
    plain object, so the decoder does not register it as a sub-module."""

    def __init__(self, output_channels, strides, kernel_sizes, conv_op, conv_bias, norm_op, norm_op_kwargs,
                 dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs):
        self.output_channels, self.strides, self.kernel_sizes = list(output_channels), strides, kernel_sizes
        self.conv_op, self.conv_bias = conv_op, conv_bias
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs
        self.dropout_op, self.dropout_op_kwargs = dropout_op, dropout_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs


class DeSamba(ContractNetwork):
    """See the module docstring. Constructor follows nnU-Net: ``DeSamba(input_channels, num_classes,
    **plans_arch_kwargs, deep_supervision=...)``; every argument is JSON-serialisable (ops as dotted names in plans).

    Args:
        input_channels: n sequences x c channels per sequence, sequence-major.
        num_classes: segmentation outputs.
        n_stages ... nonlin_kwargs, nonlin_first: nnU-Net topology (plans ``arch_kwargs``; ``features_per_stage``,
            ``n_conv_per_stage`` and ``n_conv_per_stage_decoder`` are accepted and not used: DeSamba's widths and
            conv counts come from the preset and ``light_convs`` / ``decoder_convs``).
        deep_supervision: nnU-Net's switch (``self.decoder.deep_supervision``).
        preset: "tiny" | "small" | "base" (:data:`PRESETS`); the arguments below that are None take its values.
        widths, depths, mamba_depths: per SAMNet / MambaOut stage (paper depths 3, 4, 6, 3).
        drlm_hidden: width of the DRLM's unique and shared parts.
        decoder_width, decoder_max_width: widths of the light path and the decoder, doubling per level up to the cap.
        tabular_width: width of the tabular embedding; cls_hidden, cls_dropout, cls_activation: the classifier MLP.
        light_convs, decoder_convs: convolutions per light-path stage and per decoder stage.
        small_kernel, large_kernel, mamba_kernel, mlp_ratio, mamba_expansion, num_bands, drop_path: block settings.
        num_sequences: n (None: one per input channel).
        num_cls_classes: K case-level classes; 0 builds no classifier.
        num_tabular: clinical features of the dataset (0: none).
        cls_pool_channels: segmentation channels of the lesion labels (pooling weights); None: global mean.
        spectral, mambaout, drlm, self_recon, cross_recon, use_tabular: the ablation switches.

    ``forward(x)`` -> segmentation logits (a list under deep supervision). ``forward(x, return_heads=True,
    tabular=(B, F), lesion_mask=(B, 1, *S))`` -> :class:`~nnunet_ext.architectures.contract.HeadsOutput` with
    ``cls`` (B, K) or None and ``aux_losses`` ``{"recon_self", "recon_cross"}`` (those switched on).
    """

    case_inputs = ("tabular",)
    # trained with AdamW by the trainers (ConvNeXt / MambaOut blocks are AdamW-trained networks); nnU-Net's own pieces,
    # the light path and the decoder, keep nnU-Net's SGD
    auxiliary_modules = ("encoders", "skip_projections", "drlm", "tabular_encoder", "cls_head")

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage=None, n_conv_per_stage_decoder=None, conv_bias: bool = True,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False, preset: str = DEFAULT_PRESET,
                 widths=None, depths=None, mamba_depths=None, drlm_hidden: int | None = None,
                 decoder_width: int | None = None, decoder_max_width: int | None = None,
                 tabular_width: int | None = None, cls_hidden: int | None = None, cls_dropout: float = 0.3,
                 cls_activation: str = "leaky_relu", light_convs: int = 1, decoder_convs: int = 1,
                 small_kernel: int = 3, large_kernel: int = 7, mamba_kernel: int = 7, mlp_ratio: float = 4.0,
                 mamba_expansion: float = 8 / 3, num_bands: int = 4, drop_path: float = 0.0,
                 num_sequences: int | None = None, num_cls_classes: int = 0, num_tabular: int = 0,
                 cls_pool_channels: list[int] | None = None, spectral: bool = True, mambaout: bool = True,
                 drlm: bool = True, self_recon: bool = True, cross_recon: bool = True, use_tabular: bool = True):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}; choose one of {tuple(PRESETS)}")
        p = PRESETS[preset]
        widths = list(widths or p["widths"])
        depths = list(depths or p["depths"])
        mamba_depths = list(mamba_depths or p["mamba_depths"])
        if not len(widths) == len(depths) == len(mamba_depths):
            raise ValueError(f"widths {widths}, depths {depths} and mamba_depths {mamba_depths} need one entry per "
                             "stage each")
        n_seq = input_channels if num_sequences is None else int(num_sequences)
        if n_seq < 1 or input_channels % n_seq:
            raise ValueError(f"input_channels={input_channels} is not num_sequences={n_seq} times channels per "
                             "sequence")
        if n_stages < 2 or len(strides) != n_stages:
            raise ValueError(f"DeSamba needs at least 2 planned stages with one stride each, got n_stages={n_stages} "
                             f"and strides {strides}")
        dims = 3 if conv_op is nn.Conv3d else 2
        strides = [_as_list(s, dims) for s in strides]
        kernel_sizes = [_as_list(k, dims) for k in kernel_sizes]
        m = min(len(widths), n_stages - 1)
        k = n_stages - m
        widths, depths, mamba_depths = widths[:m], depths[:m], mamba_depths[:m]
        self.preset, self.num_sequences, self.channels_per_sequence = preset, n_seq, input_channels // n_seq
        self.n_light, self.n_samnet, self.strides = k, m, strides
        self.spectral, self.mambaout = bool(spectral), bool(mambaout)
        self.cls_pool_channels = list(cls_pool_channels) if cls_pool_channels else None
        dw, dmax = int(decoder_width or p["decoder_width"]), int(decoder_max_width or p["decoder_max_width"])
        level_widths = [min(dw * 2 ** i, dmax) for i in range(n_stages)]

        # the light path: nnU-Net's plain encoder on all channels for the k shallow levels
        norm_op_kwargs = norm_op_kwargs or {}
        self.light = PlainConvEncoder(input_channels, k, level_widths[:k], conv_op, kernel_sizes[:k], strides[:k],
                                      light_convs, conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                                      nonlin, nonlin_kwargs, return_skips=True, nonlin_first=nonlin_first)
        # per-sequence dual-branch encoders on the deepest m levels
        stem = np.prod(np.array(strides[:k + 1]), axis=0).astype(int).tolist()
        samnet_strides = [stem] + strides[k + 1:]
        self.encoders = nn.ModuleList(
            SequenceEncoder(self.channels_per_sequence, conv_op, samnet_strides, widths, depths, mamba_depths,
                            spectral=spectral, mambaout=mambaout, small_kernel=small_kernel,
                            large_kernel=large_kernel, mamba_kernel=mamba_kernel, mlp_ratio=mlp_ratio,
                            mamba_expansion=mamba_expansion, num_bands=num_bands, drop_path=drop_path)
            for _ in range(n_seq))
        self.skip_projections = nn.ModuleList(
            nn.Sequential(conv_op(n_seq * w, level_widths[k + j], 1), ChannelLayerNorm(level_widths[k + j]))
            for j, w in enumerate(widths))
        spec = _DecoderSpec(level_widths, strides, kernel_sizes, conv_op, conv_bias, norm_op, norm_op_kwargs,
                            dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.decoder = UNetDecoder(spec, num_classes, decoder_convs, deep_supervision, nonlin_first=nonlin_first)

        # DRLM, tabular encoder, classifier
        c_b = widths[-1]
        self.drlm = None
        if drlm and n_seq >= 2:
            self.drlm = DecoupledReconstruction(c_b, n_seq, conv_op, int(drlm_hidden or p["drlm_hidden"]),
                                                self_recon=self_recon, cross_recon=cross_recon)
        rep = self.drlm.out_channels if self.drlm is not None else n_seq * c_b
        self.tabular_encoder = None
        if use_tabular and num_tabular > 0:
            tw = int(tabular_width or p["tabular_width"])
            self.tabular_encoder = TabularEncoder(int(num_tabular), tw, tw)
            rep += tw
        self.cls_head = ClassificationHead(rep, int(num_cls_classes), int(cls_hidden or p["cls_hidden"]), cls_dropout,
                                           0, cls_activation) if num_cls_classes > 0 else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_plans(cls, network_class_name: str, arch_kwargs: dict, settings, input_channels: int, num_classes: int,
                   deep_supervision: bool, **overrides) -> DeSamba:
        """DeSamba on a configuration's topology: ``DeSambaPlans`` (``nnunet-ext plan-and-preprocess -pl
        DeSambaPlanner``) carry the preset the planner picked; nnU-Net's U-Net plans give the topology and
        :data:`DEFAULT_PRESET`. Sequences, classes, tabular features and lesion labels come from ``settings``."""
        kwargs = {k: v for k, v in arch_kwargs.items() if k in _TOPOLOGY_KEYS or k in _OWN_KEYS}
        kwargs.update(num_sequences=settings["num_phases"], num_cls_classes=settings["num_cls_classes"],
                      num_tabular=settings["num_tabular"], cls_activation=settings["cls_activation"],
                      cls_pool_channels=lesion_pool_channels(settings["lesion_labels"], num_classes),
                      deep_supervision=deep_supervision)
        kwargs.update(overrides)
        net = cls(input_channels, num_classes, **kwargs)
        net.apply(net.initialize)
        return net

    def initialize(self, module: nn.Module) -> None:
        """For ``net.apply(net.initialize)`` (children are visited before parents): nnU-Net's He init of every
        convolution, then each block's own initialisation."""
        InitWeights_He(1e-2)(module)
        if module is not self and hasattr(module, "init_weights"):
            module.init_weights()

    def consumed_case_inputs(self) -> tuple[str, ...]:
        return ("tabular",) if self.tabular_encoder is not None else ()

    # ------------------------------------------------------------------ forward
    def sequence_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """x (B, n*c, *S) -> per sequence the fused features f_i^j of the SAMNet levels, shallowest first."""
        n, c = self.num_sequences, self.channels_per_sequence
        if x.shape[1] != n * c:
            raise ValueError(f"DeSamba was built for {n} sequence(s) x {c} channel(s); got {x.shape[1]} channels")
        return [enc(x[:, i * c:(i + 1) * c]) for i, enc in enumerate(self.encoders)]

    def forward(self, x: torch.Tensor, return_heads: bool = False, tabular: torch.Tensor | None = None,
                lesion_mask: torch.Tensor | None = None):
        if return_heads:
            self.check_case_inputs({"tabular": tabular})
        feats = self.sequence_features(x)
        skips = list(self.light(x))
        for j, project in enumerate(self.skip_projections):
            skips.append(project(torch.cat([f[j] for f in feats], dim=1)))
        seg = self.decoder(skips)
        if not return_heads:
            return seg
        deepest = [f[-1] for f in feats]
        aux: dict[str, torch.Tensor] = {}
        if self.drlm is not None:
            rep, aux = self.drlm(deepest)
        else:
            rep = torch.cat(deepest, dim=1)
        cls = None
        if self.cls_head is not None:
            pooled = lesion_weighted_pool(rep, seg, self.cls_pool_channels, lesion_mask)
            if self.tabular_encoder is not None:
                pooled = torch.cat((pooled, self.tabular_encoder(tabular).to(pooled.dtype)), dim=1)
            cls = self.cls_head(pooled)
        return HeadsOutput(seg, cls, aux, {})

    # ------------------------------------------------------------------ nnU-Net hooks
    def level_sizes(self, input_size) -> list[list[int]]:
        sizes, size = [], [int(s) for s in input_size]
        for stride in self.strides:
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        return sizes

    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's planner unit: the light path's and the decoder's convolutions (nnU-Net's own counts), plus the
        per-sequence encoders, skip projections and DRLM (their blocks' activation elements divided by
        :data:`ELEMENTS_PER_UNIT`). Parameters and optimizer state are not included (the planner adds them)."""
        units = int(self.light.compute_conv_feature_map_size(input_size))
        units += int(self.decoder.compute_conv_feature_map_size(input_size))
        numel = [int(np.prod(s, dtype=np.int64)) for s in self.level_sizes(input_size)]
        samnet = numel[self.n_light:]
        extra = self.num_sequences * self.encoders[0].activation_elements(samnet)
        for j, v in enumerate(samnet):
            extra += (self.num_sequences * self.encoders[0].widths[j] + 2 * self.decoder.encoder.output_channels[
                self.n_light + j] + 2) * v
        if self.drlm is not None:
            extra += self.drlm.activation_elements(samnet[-1])
        return int(units + extra / ELEMENTS_PER_UNIT)

    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))


_TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                  "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                  "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "nonlin_first")
_OWN_KEYS = ("preset", "widths", "depths", "mamba_depths", "drlm_hidden", "decoder_width", "decoder_max_width",
             "tabular_width", "cls_hidden", "cls_dropout", "light_convs", "decoder_convs", "small_kernel",
             "large_kernel", "mamba_kernel", "mlp_ratio", "mamba_expansion", "num_bands", "drop_path", "spectral",
             "mambaout", "drlm", "self_recon", "cross_recon", "use_tabular")
VARIANTS = {"noDRLM": {"drlm": False}, "noSpectral": {"spectral": False}, "noMambaOut": {"mambaout": False},
            "noTabular": {"use_tabular": False}, "noSelfRecon": {"self_recon": False},
            "noCrossRecon": {"cross_recon": False}}
# what the contract test and smoke runs add to a tiny U-Net topology
TINY_ARCH_KWARGS = {"preset": "tiny", "widths": [8, 16, 32, 64], "drlm_hidden": 8, "decoder_width": 8,
                    "decoder_max_width": 32, "tabular_width": 8, "cls_hidden": 16}


def preset_kwargs(preset: str) -> dict[str, Any]:
    """The constructor arguments of a preset (a copy of :data:`PRESETS` ``[preset]`` plus its name)."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; choose one of {tuple(PRESETS)}")
    return {"preset": preset, **{k: (list(v) if isinstance(v, list) else v) for k, v in PRESETS[preset].items()}}


register_architecture(
    "desamba", DeSamba, dims=(2, 3), variants=VARIANTS, plans_network_class=DESAMBA_CLASS_NAME,
    tiny_arch_kwargs=TINY_ARCH_KWARGS,
    description="DeSamba (arXiv 2507.15487): per-sequence SAMNet + 3D MambaOut encoders, decoupled representation "
                "learning (self/cross reconstruction), tabular encoder and lesion classifier, light segmentation "
                "decoder")
