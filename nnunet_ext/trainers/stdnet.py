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
``STDNetTrainer_paperProtocol``     the paper's optimisation: AdamW lr 1e-4 / wd 1e-5 for all parameters, linear
                                    warm-up over 4% of training then cosine, loss weights seg 1.0 / cls 0.5,
                                    every patch centred on a lesion (or the liver when the case has none)
=================================  ============================================================================

The paper fine-tunes from a segmentation-pre-trained encoder: ``nnunet-ext expand-pretrained`` turns a single-phase
nnU-Net checkpoint into an STD-Net-shaped one that stock ``nnUNetv2_train ... -pretrained_weights`` loads
(``docs/stdnet.md``, "Encoder pre-training").

The "joint 4D CNN" ablation is the early-fusion baseline, :class:`~nnunet_ext.trainers.early_fusion.EarlyFusionTrainer`.
"""

from __future__ import annotations

from nnunet_ext.data.sampling import LesionCentredDataLoader
from nnunet_ext.trainers.losses import DiceBCESegmentationLoss
from nnunet_ext.trainers.multitask import MultiTaskTrainer
from nnunet_ext.trainers.optim import make_adamw_optimizer


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


class STDNetTrainer_paperProtocol(STDNetTrainer):
    """The STD-Net paper's training protocol (Methods, "Implementation details"), on nnU-Net's pipeline.

    * AdamW for every parameter, lr 1e-4, weight decay 1e-5, betas 0.9/0.999;
    * a linear warm-up over 20 of 500 epochs (4% of all iterations, :attr:`warmup_fraction`), then cosine annealing
      to zero, stepped per iteration (:class:`~nnunet_ext.trainers.optim.WarmupCosineScheduler`);
    * loss weights segmentation 1.0, characterization 0.5;
    * every training patch centred on a lesion voxel, or on the liver (any foreground) when the case has no lesion
      (:class:`~nnunet_ext.data.sampling.LesionCentredDataLoader`, ``oversample_foreground_percent`` = 1), so the
      head's CE sees the lesion in every labeled patch.

    Kept from nnU-Net: the patch size and batch size of the plans (the paper uses 128x128x64 crops, batch 8), the
    segmentation loss (Dice + CE with deep supervision; ``STDNetTrainer_paperLoss`` has the paper's), augmentation.
    The paper starts from an encoder pre-trained for segmentation: combine with ``-pretrained_weights`` from
    ``nnunet-ext expand-pretrained``."""

    loss_weights = {"seg": 1.0, "cls": 0.5}
    paper_lr = 1e-4
    paper_weight_decay = 1e-5
    warmup_fraction = 20 / 500
    oversample_foreground_percent_protocol = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.oversample_foreground_percent = self.oversample_foreground_percent_protocol
        self.initial_lr = self.paper_lr
        self.weight_decay = self.paper_weight_decay

    def configure_optimizers(self):
        total = self.num_epochs * self.num_iterations_per_epoch
        return make_adamw_optimizer(self.network, self.paper_lr, self.paper_weight_decay, total,
                                    round(self.warmup_fraction * total), fused=self.optimizer_fused)

    def training_data_loader(self, *args, **kwargs):
        return LesionCentredDataLoader(*args, lesion_labels=self.settings["lesion_labels"], **kwargs)


STDNET_TRAINERS = (STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_noWeightSharing, STDNetTrainer_ConvGRU,
                   STDNetTrainer_paperLoss, STDNetTrainer_paperProtocol)
