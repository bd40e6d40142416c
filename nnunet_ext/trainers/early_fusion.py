"""Early-fusion baseline: nnU-Net's default U-Net and default plans, all phases as channels, plus a class head.

This is the "vanilla nnU-Net with a head" (the "joint 4D CNN" comparator of the STD-Net ablations): images only, the
same information STD-Net gets. ``EarlyFusionTrainer_tabular`` also feeds the dataset's tabular (clinical) features to
the head, standardised with the training fold's statistics.
"""

from __future__ import annotations

from nnunet_ext.trainers.multitask import MultiTaskTrainer


class EarlyFusionTrainer(MultiTaskTrainer):
    """``nnUNetTrainer``'s U-Net + lesion-weighted pooled bottleneck -> MLP(512, dropout 0.3) -> classes
    (:class:`~nnunet_ext.architectures.classifying_unet.ClassifyingUNet`)."""

    architecture = "early_fusion"


class EarlyFusionTrainer_tabular(EarlyFusionTrainer):
    """Early fusion whose head also receives the case's tabular features (dataset.json ``tabular``; at inference
    ``nnunet-ext predict --tabular``), concatenated to the pooled bottleneck after standardisation."""

    variant = "tabular"
