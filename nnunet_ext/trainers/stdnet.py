"""STD-Net trainers: the full model, the paper's ablations and the paper's loss.

``STDNetTrainer`` builds :class:`~nnunet_ext.architectures.stdnet.STDNet` from the plans (registered as ``"stdnet"``):

* with ``STDNetPlans*`` (``nnunet-ext plan-and-preprocess -pl STDNetPlanner``) the plans already name STD-Net and
  carry its temporal settings;
* with vanilla ``nnUNetPlans`` (or ResEnc plans) the U-Net topology of the plans is used and the temporal modeler
  gets the paper's defaults (L=6, h=8, C=768).

Phases, reference phase, number of classes and lesion labels always come from ``plans["nnunet_ext"]``, i.e. from the
dataset metadata. The ablations of the paper are registered variants of the architecture, one attribute each:

=================================  ============================================================================
``STDNetTrainer_noTemporal``        no temporal modeler: mean over phases at the bottleneck (``temporal="mean"``)
``STDNetTrainer_noWeightSharing``   one encoder per phase (``share_weights=False``)
``STDNetTrainer_ConvGRU``           ConvGRU over phases instead of the Transformer (``temporal="convgru"``)
``STDNetTrainer_paperLoss``         L = L_seg + 1.0 * CE, L_seg = 0.5 * Dice(squared denominators) + 0.5 * BCE
=================================  ============================================================================

The "joint 4D CNN" ablation is the early-fusion baseline, :class:`~nnunet_ext.trainers.early_fusion.EarlyFusionTrainer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ext.trainers.multitask import MultiTaskTrainer


class STDNetTrainer(MultiTaskTrainer):
    """STD-Net with nnU-Net's segmentation loss (Dice + CE, deep supervision) + ``loss_weights["cls"]`` * CE.

    Datasets without classes (LiTS, MSD: single-phase, segmentation only, the paper's N=1 setting) train STD-Net
    without a characterization head."""

    architecture = "stdnet"
    requires_classification = False


class STDNetTrainer_noTemporal(STDNetTrainer):
    """Ablation 'without temporal modeler': a parameter-free mean over the phases at the bottleneck feeds the decoder
    and the head (``temporal="mean"``)."""

    variant = "noTemporal"


class STDNetTrainer_noWeightSharing(STDNetTrainer):
    """Ablation 'without weight sharing': one encoder per phase (``share_weights=False``)."""

    variant = "noWeightSharing"


class STDNetTrainer_ConvGRU(STDNetTrainer):
    """Ablation 'ConvGRU instead of the Transformer' (``temporal="convgru"``)."""

    variant = "ConvGRU"


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
    l2 = ``loss_weights["cls"]`` = 1.0. nnU-Net's deep supervision weighting is kept (the inner loss of its wrapper
    is replaced)."""

    paper_dice_weight: float = 0.5
    loss_weights = {"seg": 1.0, "cls": 1.0}

    def _build_loss(self):
        loss = super()._build_loss()
        seg = DiceBCELoss(self.paper_dice_weight, bool(self.configuration_manager.batch_dice),
                          self.label_manager.has_regions, self.label_manager.ignore_label)
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = seg
            return loss
        return seg


STDNET_TRAINERS = (STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_noWeightSharing, STDNetTrainer_ConvGRU,
                   STDNetTrainer_paperLoss)
