"""Diagnostic trainers from the investigation of STD-Net's classification head (benchmarks/RESULTS.md, "What is
known about STD-Net's head"). Not part of the product; load them next to the product's trainers with

    export nnUNet_extTrainer=$(nnunet-ext trainer-path):$PWD/benchmarks/trainers

nnU-Net imports this file as a top-level module, so it uses absolute imports only. Each class changes one attribute of
a product trainer; ``<name>_smoke`` and ``<name>_gpu2500`` are generated for the scripts that run them.
"""

from __future__ import annotations

from nnunet_ext.trainers.early_fusion import EarlyFusionTrainer
from nnunet_ext.trainers.schedules import schedule_variants
from nnunet_ext.trainers.stdnet import STDNetTrainer


class STDNetTrainer_nnUNetSGD(STDNetTrainer):
    """Every parameter with nnU-Net's SGD (no AdamW group for the Transformer and the head): the control for the
    hybrid optimizer."""

    head_optimizer = "sgd"


class STDNetTrainer_predictionPool(STDNetTrainer):
    """The head pools with the predicted lesion probability in training steps too (instead of the ground truth)."""

    head_pool_in_training = "prediction"


class STDNetTrainer_shallowTemporal(STDNetTrainer):
    """A 1-layer Transformer instead of the plans' depth."""

    network_overrides = {"temporal_depth": 1}


class STDNetTrainer_headLR1e4(STDNetTrainer):
    """AdamW lr 1e-4 (the STD-Net paper's learning rate) instead of 3e-4 for the temporal modeler and the head."""

    head_lr = 1e-4


class EarlyFusionTrainer_nnUNetSGD(EarlyFusionTrainer):
    """Early fusion with nnU-Net's SGD for every parameter, the head included."""

    head_optimizer = "sgd"


class EarlyFusionTrainer_predictionPool(EarlyFusionTrainer):
    """Early fusion whose head pools with the predicted lesion in training steps too."""

    head_pool_in_training = "prediction"


DIAGNOSTIC_TRAINERS = (STDNetTrainer_nnUNetSGD, STDNetTrainer_predictionPool, STDNetTrainer_shallowTemporal,
                       STDNetTrainer_headLR1e4, EarlyFusionTrainer_nnUNetSGD, EarlyFusionTrainer_predictionPool)
globals().update(schedule_variants(*DIAGNOSTIC_TRAINERS, schedules=["smoke", "gpu2500"]))
