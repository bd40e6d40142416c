"""nnunet-ext trainers. Point nnU-Net at them with ``export nnUNet_extTrainer=$(nnunet-ext trainer-path)``; then
``nnUNetv2_train D C F -tr <name>`` and ``nnUNetv2_predict ... -tr <name>`` find every class exported here.

Exported: the trainers a user runs (each architecture, its paper ablations and paper-loss variant, the early-fusion
baseline) and their schedule variants ``<Trainer>_<schedule>`` (:data:`~nnunet_ext.trainers.schedules.SCHEDULES`),
plus vanilla ``nnUNetTrainer_<schedule>`` for the short schedules nnU-Net does not ship (seeded like ours).
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.desamba import (
    DESAMBA_TRAINERS,
    DeSambaTrainer,
    DeSambaTrainer_noCrossRecon,
    DeSambaTrainer_noDRLM,
    DeSambaTrainer_noMambaOut,
    DeSambaTrainer_noSelfRecon,
    DeSambaTrainer_noSpectral,
    DeSambaTrainer_noTabular,
)
from nnunet_ext.trainers.early_fusion import EarlyFusionTrainer, EarlyFusionTrainer_tabular
from nnunet_ext.trainers.multitask import MultiTaskTrainer
from nnunet_ext.trainers.schedules import SCHEDULES, schedule_variants
from nnunet_ext.trainers.stdnet import (
    STDNET_TRAINERS,
    STDNetTrainer,
    STDNetTrainer_ConvGRU,
    STDNetTrainer_noTemporal,
    STDNetTrainer_noWeightSharing,
    STDNetTrainer_paperLoss,
    STDNetTrainer_paperProtocol,
)
from nnunet_ext.trainers.texlivernet import (
    TEXLIVERNET_TRAINERS,
    TexLiverNetTrainer,
    TexLiverNetTrainer_noText,
    TexLiverNetTrainer_paperLoss,
)

PRODUCT_TRAINERS = (EarlyFusionTrainer, EarlyFusionTrainer_tabular, *STDNET_TRAINERS, *TEXLIVERNET_TRAINERS,
                    *DESAMBA_TRAINERS)
_VARIANTS = {**schedule_variants(*PRODUCT_TRAINERS),
             # nnU-Net ships nnUNetTrainer_250epochs itself: only the short schedules for the vanilla reference
             **schedule_variants(nnUNetTrainer, schedules=[s for s in SCHEDULES if not s.endswith("epochs")])}
globals().update(_VARIANTS)

__all__ = ["MultiTaskTrainer", "EarlyFusionTrainer", "EarlyFusionTrainer_tabular", "STDNetTrainer",
           "STDNetTrainer_noTemporal", "STDNetTrainer_noWeightSharing", "STDNetTrainer_ConvGRU",
           "STDNetTrainer_paperLoss", "STDNetTrainer_paperProtocol", "TexLiverNetTrainer", "TexLiverNetTrainer_noText",
           "TexLiverNetTrainer_paperLoss", "DeSambaTrainer", "DeSambaTrainer_noDRLM", "DeSambaTrainer_noSpectral",
           "DeSambaTrainer_noMambaOut", "DeSambaTrainer_noTabular", "DeSambaTrainer_noSelfRecon",
           "DeSambaTrainer_noCrossRecon",
           "PRODUCT_TRAINERS", "SCHEDULES", *sorted(_VARIANTS)]
