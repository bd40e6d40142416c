"""nnunet-ext trainers. Point nnU-Net at them with ``export nnUNet_extTrainer=$(nnunet-ext trainer-path)``; then
``nnUNetv2_train D C F -tr <name>`` and ``nnUNetv2_predict ... -tr <name>`` find every class exported here."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.early_fusion import (
    EarlyFusionTrainer,
    EarlyFusionTrainer_nnUNetSGD,
    EarlyFusionTrainer_predictionPool,
)
from nnunet_ext.trainers.multitask import MultiTaskTrainer
from nnunet_ext.trainers.schedules import SCHEDULES, schedule_variants
from nnunet_ext.trainers.stdnet import (
    STDNET_TRAINERS,
    STDNetTrainer,
    STDNetTrainer_ConvGRU,
    STDNetTrainer_fp32Temporal,
    STDNetTrainer_headInputNorm,
    STDNetTrainer_headLR1e4,
    STDNetTrainer_nnUNetSGD,
    STDNetTrainer_noTemporal,
    STDNetTrainer_noWeightSharing,
    STDNetTrainer_paperLoss,
    STDNetTrainer_predictionPool,
    STDNetTrainer_shallowTemporal,
)

# vanilla nnU-Net with only the schedule changed (the segmentation reference on the same short schedules)
_BASES = (nnUNetTrainer, EarlyFusionTrainer, EarlyFusionTrainer_nnUNetSGD, EarlyFusionTrainer_predictionPool,
          *STDNET_TRAINERS)
_VARIANTS = {k: v for k, v in schedule_variants(*_BASES).items()
             if not k.endswith(("epoch", "epochs")) or not k.startswith("nnUNetTrainer_")}
globals().update(_VARIANTS)

__all__ = ["MultiTaskTrainer", "EarlyFusionTrainer", "EarlyFusionTrainer_nnUNetSGD",
           "EarlyFusionTrainer_predictionPool", "STDNetTrainer", "STDNetTrainer_noTemporal",
           "STDNetTrainer_noWeightSharing", "STDNetTrainer_ConvGRU", "STDNetTrainer_paperLoss",
           "STDNetTrainer_nnUNetSGD", "STDNetTrainer_predictionPool", "STDNetTrainer_fp32Temporal",
           "STDNetTrainer_shallowTemporal", "STDNetTrainer_headLR1e4", "STDNetTrainer_headInputNorm", "SCHEDULES",
           *sorted(_VARIANTS)]


def trainer_discovery_path() -> str:
    """The folder to put in ``nnUNet_extTrainer``: one shim module that re-exports the classes above."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "discovery")
