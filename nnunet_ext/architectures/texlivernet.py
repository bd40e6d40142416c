"""TexLiverNet: text-conditioned liver-tumour segmentation, in nnU-Net's conventions.

Paper: "TexLiverNet: leveraging medical knowledge and spatial-frequency perception for enhanced liver tumor
segmentation", arXiv 2411.04595. The authors' public code (github sky-visionX/TexLiverNet) is incomplete: its forward
pass takes no text and there is no training script; this is, as far as we know, the first implementation that trains
with text end to end.

::

    x (B, C_in, Y, X)
      |  nnU-Net's plain encoder (widths, kernels, strides, convs per stage from the plans; InstanceNorm)
      v
    skips f_0 .. f_{L-1}, bottleneck f_L
      |  f_{L-1}, f_L: + DOR-MLP (rolling MLP, Rolling-UNet)            [the paper's level 4 and bottleneck]
      |  f_L: DOR-MLP(f_L) + SFPM-s(f_L) - f_L                          [spatial perception, in parallel]
      |  f_L: TIA(f_L, text tokens, mask)                               [text-image agent attention]
      |  f_0 .. f_{L-1}: SFPM-f (frequency perception, FFTs in float32) [on the skips]
      v
    additive-skip decoder (interpolation x stride, 1x1 conv, + skip, convs), 1x1 seg layers (deep supervision)
      v
    logits (no sigmoid), a list under deep supervision

What follows the paper: the encoder-decoder with additive skips and bilinear upsampling; DOR-MLP at the last encoder
level and at the bottleneck; SFPM-s in parallel at the bottleneck; SFPM-f on the skips; the TIA agent cross-attention
between image tokens and the text's tokens at the bottleneck, with its PConv + pointwise diversity path; a frozen
text encoder (here: token embeddings computed once by ``plan-and-preprocess``, :mod:`nnunet_ext.data.case_inputs`).

Chosen here (nnU-Net's conventions; the paper is 2D, 256x256, widths 64-1024, BatchNorm, a final sigmoid): logits
out, InstanceNorm and the plans' topology (so the paper's five levels become nnU-Net's planned stages; "level 4" is
the stage above the bottleneck), deep-supervision outputs, the encoder's downsampling by strided convolution as in
nnU-Net. A learned "no text" token stands in for a missing text, and ``text_dropout`` trains it (so inference
without text degrades instead of failing). ``use_text=False`` is the ablation without the text path (the TIA module
attends to the "no text" token only). 2D in the paper and in nnU-Net's ``2d`` configuration; the blocks are
dimension-agnostic, the registered architecture is 2D.
"""

from __future__ import annotations

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_ext.architectures.blocks.additive_decoder import AdditiveSkipDecoder
from nnunet_ext.architectures.blocks.agent_attention import TextImageAgentAttention
from nnunet_ext.architectures.blocks.frequency_perception import FrequencyPerception
from nnunet_ext.architectures.blocks.rolling_mlp import RollingMLP
from nnunet_ext.architectures.blocks.spatial_perception import SpatialPerception
from nnunet_ext.architectures.contract import ContractNetwork, HeadsOutput, register_architecture

TEXLIVERNET_CLASS_NAME = "nnunet_ext.architectures.texlivernet.TexLiverNet"
# nnU-Net counts one element per conv output; token / MLP activations are divided by this to be in its unit
# (the same calibration as STD-Net's, nnunet_ext.architectures.stdnet.ELEMENTS_PER_UNIT)
ELEMENTS_PER_UNIT = 2.5
DEFAULT_FILTER_SIZE = 32  # SFPM-f filter grid side when the plans give no input size


class TexLiverNet(ContractNetwork):
    """See the module docstring. Constructor follows nnU-Net: ``TexLiverNet(input_channels, num_classes,
    **plans_arch_kwargs, deep_supervision=...)``; every argument is JSON-serialisable.

    Args:
        n_stages ... nonlin_kwargs, n_conv_per_stage_decoder, nonlin_first: nnU-Net topology (plans arch_kwargs).
        text_dim: width of the text encoder's token embeddings (from the plans' text-encoder record).
        use_text: False: the ablation without text (the network consumes no text).
        text_heads, agents, text_dropout, max_text_tokens: the TIA module (agents per axis; dropout of whole texts
            in training, replaced by the learned "no text" token).
        rolling_stages: how many of the deepest encoder outputs get a DOR-MLP (paper: level 4 and the bottleneck).
        input_size: the training patch size (the SFPM-f filters are stored at its rfft grid per level).

    ``forward(x)``: x (B, C_in, *S) -> logits (B, num_classes, *S) (a list under deep supervision).
    ``forward(x, return_heads=True, text=(B, T, text_dim), text_mask=(B, T))`` ->
    :class:`~nnunet_ext.architectures.contract.HeadsOutput` (segmentation only: ``cls`` None). Without ``text``
    (or with an all-False mask) a sample uses the "no text" token.
    """

    case_inputs = ("text",)
    optional_case_inputs = ("text",)
    auxiliary_modules = ("rolling", "frequency", "tia")

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage, conv_op,
                 kernel_sizes, strides, n_conv_per_stage=2, n_conv_per_stage_decoder=2, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False, text_dim: int = 384,
                 use_text: bool = True, text_heads: int = 4, agents: int = 7, text_dropout: float = 0.2,
                 max_text_tokens: int = 64, rolling_stages: int = 2, input_size=None):
        super().__init__()
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                        nonlin_first=nonlin_first)
        widths = list(self.encoder.output_channels)
        if not 1 <= rolling_stages <= len(widths):
            raise ValueError(f"rolling_stages={rolling_stages} must be between 1 and the {len(widths)} stages")
        self.use_text, self.text_dim = bool(use_text), int(text_dim)
        self.rolling_stages = int(rolling_stages)
        self.rolling = nn.ModuleList([RollingMLP(w, conv_op) for w in widths[-rolling_stages:]])
        self.spatial = SpatialPerception(widths[-1], conv_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        self.tia = TextImageAgentAttention(widths[-1], self.text_dim, conv_op, heads=text_heads, agents=agents,
                                           text_dropout=text_dropout if use_text else 0.0,
                                           max_text_tokens=max_text_tokens)
        self.level_sizes = self._level_sizes(input_size, len(widths), conv_op) if input_size is not None else None
        self.frequency = nn.ModuleList([
            FrequencyPerception(w, conv_op, filter_size=self._filter_size(i, conv_op)) for i, w in
            enumerate(widths[:-1])])
        self.decoder = AdditiveSkipDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                           nonlin_first)

    # ------------------------------------------------------------------ construction helpers
    def _level_sizes(self, input_size, n: int, conv_op) -> list[list[int]]:
        sizes, size = [], [int(s) for s in input_size]
        for stride in self.encoder.strides[:n]:
            stride = list(stride) if isinstance(stride, (list, tuple)) else [stride] * len(size)
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        return sizes

    def _filter_size(self, level: int, conv_op) -> tuple[int, ...]:
        dims = 3 if conv_op is nn.Conv3d else 2
        size = self.level_sizes[level] if self.level_sizes is not None else [DEFAULT_FILTER_SIZE] * dims
        return (*size[:-1], size[-1] // 2 + 1)

    @classmethod
    def from_plans(cls, network_class_name: str, arch_kwargs: dict, settings, input_channels: int, num_classes: int,
                   deep_supervision: bool, **overrides) -> TexLiverNet:
        """TexLiverNet on a configuration's topology: ``TexLiverNetPlans`` (``nnunet-ext plan-and-preprocess -pl
        TexLiverNetPlanner``) record the input size; nnU-Net's 2d U-Net plans give the topology (and the default
        SFPM-f filter grid). The text width and token count come from the plans' text-encoder record."""
        kwargs = {k: v for k, v in arch_kwargs.items() if k in _TOPOLOGY_KEYS or k in _OWN_KEYS}
        encoder = settings.get("text_encoder") or {}
        if encoder:
            kwargs.update(text_dim=int(encoder["dim"]), max_text_tokens=int(encoder["max_tokens"]))
        kwargs.update(deep_supervision=deep_supervision, **overrides)
        net = cls(input_channels, num_classes, **kwargs)
        net.apply(net.initialize)
        return net

    def consumed_case_inputs(self) -> tuple[str, ...]:
        return ("text",) if self.use_text else ()

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, return_heads: bool = False, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None):
        skips = list(self.encoder(x))
        n = len(skips)
        for i, block in enumerate(self.rolling):
            level = n - self.rolling_stages + i
            skips[level] = block(skips[level]) if level < n - 1 else skips[level]
        bottleneck = skips[-1]
        fused = self.rolling[-1](bottleneck) + self.spatial(bottleneck) - bottleneck  # DOR-MLP || SFPM-s
        if not self.use_text:
            text = text_mask = None
        skips[-1] = self.tia(fused, text, text_mask)
        skips[:-1] = [freq(s) for freq, s in zip(self.frequency, skips[:-1])]
        seg = self.decoder(skips)
        if not return_heads:
            return seg
        return HeadsOutput(seg, None, {}, {})

    # ------------------------------------------------------------------ nnU-Net hooks
    def compute_conv_feature_map_size(self, input_size) -> int:
        """nnU-Net's planner unit: encoder + decoder convolutions, plus the blocks' activations (DOR-MLP, SFPM-s,
        SFPM-f, TIA) divided by :data:`ELEMENTS_PER_UNIT`."""
        units = int(self.encoder.compute_conv_feature_map_size(input_size))
        units += int(self.decoder.compute_conv_feature_map_size(input_size))
        sizes = self._level_sizes(input_size, len(self.encoder.output_channels), None)
        numel = [int(np.prod(s, dtype=np.int64)) for s in sizes]
        extra = sum(block.activation_elements(numel[len(numel) - self.rolling_stages + i])
                    for i, block in enumerate(self.rolling))
        extra += self.spatial.activation_elements(numel[-1])
        extra += self.tia.activation_elements(numel[-1], self.tia.max_text_tokens)
        extra += sum(f.activation_elements(v) for f, v in zip(self.frequency, numel[:-1]))
        return int(units + extra / ELEMENTS_PER_UNIT)

    def initialize(self, module: nn.Module) -> None:
        """For ``net.apply(net.initialize)`` (children are visited before parents): nnU-Net's He init of every
        convolution, then each block's own initialisation (zero-initialised projections, filters, tokens)."""
        InitWeights_He(1e-2)(module)
        if module is not self and hasattr(module, "init_weights"):
            module.init_weights()


_TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                  "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                  "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "nonlin_first")
_OWN_KEYS = ("text_dim", "use_text", "text_heads", "agents", "text_dropout", "max_text_tokens", "rolling_stages",
             "input_size")

register_architecture(
    "texlivernet", TexLiverNet, dims=(2,), variants={"noText": {"use_text": False}},
    plans_network_class=TEXLIVERNET_CLASS_NAME,
    tiny_arch_kwargs={"text_heads": 2, "agents": 2, "max_text_tokens": 8},
    description="TexLiverNet (arXiv 2411.04595): text-conditioned 2D liver-tumour segmentation (DOR-MLP, SFPM-s, "
                "SFPM-f, text-image agent attention)")
