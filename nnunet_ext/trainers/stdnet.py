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

from nnunet_ext.trainers.losses import DiceBCESegmentationLoss
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


class STDNetTrainer_paperLoss(DiceBCESegmentationLoss, STDNetTrainer):
    """The paper's loss, ``L = l1 * L_seg + l2 * L_cls`` with ``L_seg = a * Dice + (1 - a) * BCE`` (Dice with squared
    denominators) and ``L_cls = CE``. The design notes give no values: a = 0.5 (``paper_dice_weight``), l1 = 1,
    l2 = ``loss_weights["cls"]`` = 1.0. nnU-Net's deep supervision weighting is kept (the inner loss of its wrapper
    is replaced)."""

    paper_dice_weight = 0.5
    loss_weights = {"seg": 1.0, "cls": 1.0}


STDNET_TRAINERS = (STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_noWeightSharing, STDNetTrainer_ConvGRU,
                   STDNetTrainer_paperLoss)
