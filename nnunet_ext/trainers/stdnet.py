"""STD-Net trainers: the full model, the paper's ablations and the paper's loss.

``STDNetTrainer`` builds :class:`~nnunet_ext.architectures.stdnet.STDNet` from the plans:

* with ``STDNetPlans*`` (``nnunet-ext plan-and-preprocess -pl STDNetPlanner``) the plans already name STD-Net and
  carry its temporal settings;
* with vanilla ``nnUNetPlans`` (or ResEnc plans) the U-Net topology of the plans is used and the temporal modeler
  gets the paper's defaults (L=6, h=8, C=768).

Phases, reference phase and number of classes always come from ``plans["nnunet_ext"]`` (``head_settings``), i.e.
from the dataset metadata. Ablations (paper, ablation study) are one-line variants made by :func:`stdnet_variant`:

=================================  ============================================================================
``STDNetTrainer_noTemporal``        no temporal modeler: mean over phases at the bottleneck (``temporal="mean"``)
``STDNetTrainer_noWeightSharing``   one encoder per phase (``share_weights=False``)
``STDNetTrainer_ConvGRU``           ConvGRU over phases instead of the Transformer (``temporal="convgru"``)
``STDNetTrainer_paperLoss``         L = L_seg + 1.0 * CE, L_seg = 0.5 * Dice(squared denominators) + 0.5 * BCE
``STDNetTrainer_nnUNetSGD``         every parameter with nnU-Net's SGD (no AdamW for transformer and head): control
``STDNetTrainer_predictionPool``    the head pools with the predicted lesion in training steps too: control
=================================  ============================================================================

Diagnostics for why the Transformer's head stays at the class prior in the synthetic GPU comparison
(``benchmarks/RESULTS.md``, "Does decoupling help?"), each changing one suspect:

==================================  ===========================================================================
``STDNetTrainer_fp32Temporal``      Transformer and its output projection in float32 under autocast (precision)
``STDNetTrainer_shallowTemporal``   a 1-layer Transformer instead of the plans' depth (optimisation depth)
``STDNetTrainer_headLR1e4``         AdamW lr 1e-4 instead of 3e-4 for temporal modeler and head (step size)
``STDNetTrainer_headInputNorm``     the pooled CLS features standardised with running statistics before the head
                                    (``cls_input_norm="running"``: the spread of a LayerNorm'd CLS output is a few
                                    percent of its magnitude)
==================================  ===========================================================================

The "joint 4D CNN" ablation is the early-fusion baseline, :class:`~nnunet_ext.trainers.early_fusion.EarlyFusionTrainer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.architectures.base import head_network_kwargs, head_settings, resolved_arch_kwargs
from nnunet_ext.architectures.stdnet import STDNet
from nnunet_ext.trainers.multitask import MultiTaskTrainer

STDNET_CLASS_NAME = f"{STDNet.__module__}.{STDNet.__name__}"
# temporal settings used when the plans are not STD-Net plans (paper defaults)
PAPER_TEMPORAL_SETTINGS = {"temporal": "transformer", "temporal_depth": 6, "temporal_heads": 8, "temporal_dim": 768}


def build_stdnet(plans_manager: PlansManager, configuration_manager: ConfigurationManager, num_input_channels: int,
                 num_output_channels: int, enable_deep_supervision: bool = True, **overrides) -> STDNet:
    """STD-Net for a configuration of any nnU-Net plans (see module docstring); ``overrides`` are STDNet arguments
    that win over the plans (the ablations)."""
    settings = head_settings(plans_manager.plans)
    kwargs = resolved_arch_kwargs(configuration_manager)
    if configuration_manager.network_arch_class_name != STDNET_CLASS_NAME:
        kwargs = {**kwargs, "encoder": "residual" if "n_blocks_per_stage" in kwargs else "plain",
                  **PAPER_TEMPORAL_SETTINGS}
    kwargs.update(num_phases=settings["num_phases"], reference_phase=settings["reference_phase_index"],
                  deep_supervision=enable_deep_supervision, **head_network_kwargs(settings, num_output_channels))
    kwargs.update(overrides)
    net = STDNet(num_input_channels, num_output_channels, **kwargs)
    net.apply(net.initialize)
    return net


class STDNetTrainer(MultiTaskTrainer):
    """STD-Net with nnU-Net's segmentation loss (Dice + CE, deep supervision) + ``cls_loss_weight`` * CE.

    Datasets without classes (LiTS, MSD: single-phase, segmentation only, the paper's N=1 setting) train STD-Net
    without a characterization head."""

    requires_classification = False

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_stdnet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                            enable_deep_supervision)


def stdnet_variant(name: str, doc: str, base: type = STDNetTrainer, **overrides) -> type:
    """A subclass of ``base`` named ``name`` whose network is STD-Net with ``overrides`` (e.g. ``temporal="mean"``).
    Assign the result to a module-level variable of the same name (pickling and nnU-Net's lookup need it)."""

    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_stdnet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                            enable_deep_supervision, **overrides)

    return type(name, (base,), {"build_network_architecture": staticmethod(build_network_architecture),
                                "stdnet_overrides": dict(overrides), "__doc__": doc, "__module__": __name__,
                                "__qualname__": name})


STDNetTrainer_noTemporal = stdnet_variant(
    "STDNetTrainer_noTemporal", "Ablation 'without temporal modeler': parameter-free mean over the phases at the "
    "bottleneck feeds the decoder and the head (``temporal='mean'``).", temporal="mean")
STDNetTrainer_noWeightSharing = stdnet_variant(
    "STDNetTrainer_noWeightSharing", "Ablation 'without weight sharing': one encoder per phase "
    "(``share_weights=False``).", share_weights=False)
STDNetTrainer_ConvGRU = stdnet_variant(
    "STDNetTrainer_ConvGRU", "Ablation 'ConvGRU instead of the Transformer' (``temporal='convgru'``).",
    temporal="convgru")


class DiceBCELoss(nn.Module):
    """``a * (1 - Dice) + (1 - a) * BCE`` per foreground label (one-vs-rest on the softmax probabilities; sigmoid for
    nnU-Net region labels), averaged over labels. Dice with squared denominators (V-Net):
    ``2 sum(p y) / (sum(p^2) + sum(y^2))``, over the batch when ``batch_dice``.

    ``forward(logits, target)``: logits (B, C, *S); target (B, 1, *S) label map (or (B, R[+1], *S) regions, the
    last channel marking ignored voxels when ``has_ignore``) -> scalar.
    """

    def __init__(self, dice_weight: float = 0.5, batch_dice: bool = False, has_regions: bool = False,
                 ignore_label: int | None = None, smooth: float = 1e-5):
        super().__init__()
        self.dice_weight, self.batch_dice, self.has_regions = dice_weight, batch_dice, has_regions
        self.ignore_label, self.smooth = ignore_label, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.has_regions:
            mask = (1 - target[:, -1:]).float() if self.ignore_label is not None else None
            y = (target[:, :-1] if self.ignore_label is not None else target).float()
            p = torch.sigmoid(logits)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            labels = target[:, 0].long()
            mask = (labels != self.ignore_label).unsqueeze(1).float() if self.ignore_label is not None else None
            y = F.one_hot(labels.clamp(0, logits.shape[1] - 1), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
            log_all = torch.logsumexp(logits, 1, keepdim=True)
            log_p = logits[:, 1:] - log_all
            # log(1 - p_c) = logsumexp over the other classes - logsumexp over all
            others = torch.stack([torch.logsumexp(torch.cat((logits[:, :c], logits[:, c + 1:]), 1), 1)
                                  for c in range(1, logits.shape[1])], 1)
            log_not_p = others - log_all
            p = log_p.exp()
            bce = -(y * log_p + (1 - y) * log_not_p)
        if mask is not None:
            p, y, bce = p * mask, y * mask, bce * mask
            bce = bce.sum() / (mask.sum() * y.shape[1]).clamp_min(1)
        else:
            bce = bce.mean()
        dims = (0, *range(2, p.ndim)) if self.batch_dice else tuple(range(2, p.ndim))
        dice = (2 * (p * y).sum(dims) + self.smooth) / ((p * p).sum(dims) + (y * y).sum(dims) + self.smooth)
        return self.dice_weight * (1 - dice.mean()) + (1 - self.dice_weight) * bce


class STDNetTrainer_paperLoss(STDNetTrainer):
    """The paper's loss, ``L = l1 * L_seg + l2 * L_cls`` with ``L_seg = a * Dice + (1 - a) * BCE`` (Dice with squared
    denominators) and ``L_cls = CE``. The design notes give no values: a = 0.5 (``paper_dice_weight``), l1 = 1,
    l2 = ``cls_loss_weight`` = 1.0. nnU-Net's deep supervision weighting is kept (the inner loss of its wrapper is
    replaced)."""

    paper_dice_weight: float = 0.5
    cls_loss_weight: float = 1.0

    def _build_loss(self):
        loss = super()._build_loss()
        seg = DiceBCELoss(self.paper_dice_weight, bool(self.configuration_manager.batch_dice),
                          self.label_manager.has_regions, self.label_manager.ignore_label)
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = seg
            return loss
        return seg


class STDNetTrainer_nnUNetSGD(STDNetTrainer):
    """STD-Net with nnU-Net's SGD (lr 1e-2, momentum 0.99, poly, no warm-up) for every parameter, transformer and
    head included: the optimizer of the first synthetic GPU comparison, under which the head collapsed. Kept as the
    control that shows what the AdamW group of :class:`~nnunet_ext.trainers.multitask.MultiTaskTrainer` changes."""

    head_optimizer = "sgd"


class STDNetTrainer_predictionPool(STDNetTrainer):
    """STD-Net whose head pools with the network's own predicted lesion probability in training steps too (as the
    synthetic GPU comparisons up to run 4 did), instead of the ground-truth lesion mask
    (:attr:`~nnunet_ext.trainers.multitask.MultiTaskTrainer.head_pool_in_training`). The control for that choice."""

    head_pool_in_training = "prediction"


STDNetTrainer_fp32Temporal = stdnet_variant(
    "STDNetTrainer_fp32Temporal", "Diagnostic: STD-Net whose Transformer and output projection run in float32 under "
    "nnU-Net's fp16 autocast (``temporal_fp32=True``); everything else as STDNetTrainer.", temporal_fp32=True)
STDNetTrainer_shallowTemporal = stdnet_variant(
    "STDNetTrainer_shallowTemporal", "Diagnostic: STD-Net with a 1-layer Transformer (``temporal_depth=1``; heads and "
    "width from the plans); everything else as STDNetTrainer.", temporal_depth=1)

STDNetTrainer_headInputNorm = stdnet_variant(
    "STDNetTrainer_headInputNorm", "Diagnostic: STD-Net whose head standardises its pooled CLS features with running "
    "statistics (``cls_input_norm='running'``, "
    ":class:`~nnunet_ext.architectures.blocks.heads.RunningStandardize`); everything else as STDNetTrainer.",
    cls_input_norm="running")


class STDNetTrainer_headLR1e4(STDNetTrainer):
    """Diagnostic: STD-Net whose temporal modeler and head train with AdamW lr 1e-4 instead of the paper's 3e-4
    (:attr:`~nnunet_ext.trainers.multitask.MultiTaskTrainer.head_lr`); everything else as STDNetTrainer."""

    head_lr = 1e-4


STDNET_TRAINERS = (STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_noWeightSharing, STDNetTrainer_ConvGRU,
                   STDNetTrainer_paperLoss, STDNetTrainer_nnUNetSGD, STDNetTrainer_predictionPool,
                   STDNetTrainer_fp32Temporal, STDNetTrainer_shallowTemporal, STDNetTrainer_headLR1e4,
                   STDNetTrainer_headInputNorm)
