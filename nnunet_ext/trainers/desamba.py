"""DeSamba trainers: the full model, classification-primary, and the paper's ablations.

``DeSambaTrainer`` builds :class:`~nnunet_ext.architectures.desamba.DeSamba` from the plans (registered as
``"desamba"``): with ``DeSambaPlans`` (``nnunet-ext plan-and-preprocess -pl DeSambaPlanner``) the preset the planner
picked, with nnU-Net's ``nnUNetPlans`` the U-Net topology and the ``small`` preset. Sequences (one per channel, or
the metadata's ``phases`` block), classes, clinical (tabular) features and lesion labels come from
``plans["nnunet_ext"]``, i.e. from the dataset metadata.

* **Classification-primary**: ``checkpoint_best`` by the EMA of the validation macro AUC
  (``primary_task = "classification"``, :class:`~nnunet_ext.trainers.multitask.MultiTaskTrainer`).
* **Loss** (paper: ``CE + 0.5 L_self + 0.5 L_cross``): ``loss_weights = {"seg": 1.0, "cls": 1.0, "recon_self":
  0.5, "recon_cross": 0.5}``; ``seg`` is nnU-Net's Dice + CE with deep supervision on the lesion ROI (the paper takes
  its ROI masks as given; here the network segments them). Change the segmentation weight in a subclass:
  ``loss_weights = {**DeSambaTrainer.loss_weights, "seg": 0.2}``.
* **Lesion-centred patches**: every training patch is centred on a lesion voxel (any foreground when the case has
  no lesion; :class:`~nnunet_ext.data.sampling.LesionCentredDataLoader`, ``oversample_foreground_percent`` = 1), as
  the paper classifies lesion ROIs; the planner makes the patch cover the ROI.
* **Clinical features**: fed to the tabular encoder when the metadata declares them (standardised with the training
  fold's statistics); predict with ``nnunet-ext predict --tabular``.
* Metrics of the final validation (``validation/summary_classification.json``): top-1 and top-k accuracy, per-class
  and macro AUC, per-class sensitivity, specificity and F1, macro F1; the collapsed-head guard of every trainer with
  a head applies.

The ablations of the paper are registered variants of the architecture, one attribute each:

===============================  =================================================================================
``DeSambaTrainer_noDRLM``         no decoupled representation learning: the classifier reads ``[f_1 .. f_n]``
``DeSambaTrainer_noSpectral``     SAMNet without its frequency branch (SAMBlock = ConvNeXt V2 spatial branch)
``DeSambaTrainer_noMambaOut``     no MambaOut branch and no branch fusion: f_i is SAMNet's feature
``DeSambaTrainer_noTabular``      no clinical features
``DeSambaTrainer_noSelfRecon``    DRLM without the self-reconstruction decoders and loss
``DeSambaTrainer_noCrossRecon``   DRLM without the cross-reconstruction decoders and loss
===============================  =================================================================================

Optimizers (:mod:`nnunet_ext.trainers.optim`): nnU-Net's own pieces, the light segmentation path and the decoder,
train with nnU-Net's SGD + poly; the per-sequence SAMNet / MambaOut encoders (ConvNeXt- and MambaOut-style blocks,
which are trained with AdamW), their skip projections, the DRLM, the tabular encoder and the classifier
(``auxiliary_modules``) with AdamW after a linear warm-up. The paper's optimizer settings are not given in our
notes and are not reproduced.
"""

from __future__ import annotations

from nnunet_ext.data.sampling import LesionCentredDataLoader
from nnunet_ext.trainers.multitask import MultiTaskTrainer


class DeSambaTrainer(MultiTaskTrainer):
    """DeSamba, classification-primary, lesion-centred patches (see the module docstring)."""

    architecture = "desamba"
    primary_task = "classification"
    loss_weights = {"seg": 1.0, "cls": 1.0, "recon_self": 0.5, "recon_cross": 0.5}
    lesion_patch_fraction = 1.0  # nnU-Net's oversample_foreground_percent

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.oversample_foreground_percent = self.lesion_patch_fraction

    def training_data_loader(self, *args, **kwargs):
        return LesionCentredDataLoader(*args, lesion_labels=self.settings["lesion_labels"] or (), **kwargs)


class DeSambaTrainer_noDRLM(DeSambaTrainer):
    """Ablation: no DRLM (no reconstruction losses); the classifier pools the sequences' concatenated features."""

    variant = "noDRLM"


class DeSambaTrainer_noSpectral(DeSambaTrainer):
    """Ablation: SAMNet without its frequency branch (no SAMB, no gate)."""

    variant = "noSpectral"


class DeSambaTrainer_noMambaOut(DeSambaTrainer):
    """Ablation: no 3D MambaOut branch (and no branch fusion)."""

    variant = "noMambaOut"


class DeSambaTrainer_noTabular(DeSambaTrainer):
    """Ablation: the clinical features are not used (needs none at inference)."""

    variant = "noTabular"


class DeSambaTrainer_noSelfRecon(DeSambaTrainer):
    """Ablation: DRLM without self-reconstruction."""

    variant = "noSelfRecon"


class DeSambaTrainer_noCrossRecon(DeSambaTrainer):
    """Ablation: DRLM without cross-reconstruction."""

    variant = "noCrossRecon"


DESAMBA_TRAINERS = (DeSambaTrainer, DeSambaTrainer_noDRLM, DeSambaTrainer_noSpectral, DeSambaTrainer_noMambaOut,
                    DeSambaTrainer_noTabular, DeSambaTrainer_noSelfRecon, DeSambaTrainer_noCrossRecon)
