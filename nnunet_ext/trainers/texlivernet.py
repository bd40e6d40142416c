"""TexLiverNet trainers: the text-conditioned network, its ablation without text, and the paper's loss.

=================================  ============================================================================
``TexLiverNetTrainer``              TexLiverNet with nnU-Net's Dice + CE (deep supervision); consumes the texts
``TexLiverNetTrainer_noText``       the same network with its text path off (the "no text" token only)
``TexLiverNetTrainer_paperLoss``    the paper's segmentation loss, BCE + Dice at 8:2
=================================  ============================================================================

Train on the ``2d`` configuration, with ``-p TexLiverNetPlans`` (``nnunet-ext plan-and-preprocess -pl
TexLiverNetPlanner -c 2d``) or nnU-Net's ``nnUNetPlans`` (its 2d U-Net topology). Every case needs a text in the
metadata (``nnunet-ext convert ircadb --2d`` and the synthetic generators write them; the rule-based describer when
none is given); ``plan-and-preprocess`` embeds them once with the frozen text encoder. Predict with ``nnunet-ext
predict --texts``. The text encoder is frozen; the U-Net convolutions train with nnU-Net's SGD, DOR-MLP, SFPM-f and
the text attention with AdamW (:mod:`nnunet_ext.trainers.optim`; the paper trains everything with AdamW, lr 3e-4
cosine to 1e-4, weight decay 1e-4, batch 32, 200 epochs).
"""

from __future__ import annotations

from nnunet_ext.trainers.losses import DiceBCESegmentationLoss
from nnunet_ext.trainers.multitask import MultiTaskTrainer


class TexLiverNetTrainer(MultiTaskTrainer):
    """TexLiverNet (:class:`~nnunet_ext.architectures.texlivernet.TexLiverNet`) on the plans' 2d configuration."""

    architecture = "texlivernet"
    requires_classification = False


class TexLiverNetTrainer_noText(TexLiverNetTrainer):
    """Ablation: the same network with its text path off; needs no texts."""

    variant = "noText"


class TexLiverNetTrainer_paperLoss(DiceBCESegmentationLoss, TexLiverNetTrainer):
    """The paper's loss: ``0.8 * BCE + 0.2 * Dice`` (one-vs-rest per foreground label, inside nnU-Net's deep
    supervision)."""

    paper_dice_weight = 0.2


TEXLIVERNET_TRAINERS = (TexLiverNetTrainer, TexLiverNetTrainer_noText, TexLiverNetTrainer_paperLoss)
