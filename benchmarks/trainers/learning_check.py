"""Trainers of STD-Net's head learning check (benchmarks/stdnet_learning_check.py), on the check's own CPU schedules.

``lc600``: 30 epochs x 20 iterations (600 training iterations, the ``demo`` schedule's length), 4 validation
iterations per epoch, no test-time mirroring; ``lc300``: 15 epochs x 20 iterations, otherwise the same (DeSamba's
check, which trains eight methods). ``lcsmoke``: 1 epoch x 2 iterations, for the script's ``--smoke`` mode
(plumbing only). Each base of :data:`LEARNING_CHECK_BASES` gets every variant as a module-level class
(``STDNetTrainer_paperProtocol_lc600``, ...),
seeded by ``nnUNet_ext_seed`` like every nnunet-ext trainer; ``nnUNetTrainer_<schedule>`` is the vanilla trainer of
the paper protocol's encoder pre-training. Not part of the product; load with

    export nnUNet_extTrainer=$(nnunet-ext trainer-path):$PWD/benchmarks/trainers

(the check script does this itself). nnU-Net imports this file as a top-level module: absolute imports only.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.early_fusion import EarlyFusionTrainer
from nnunet_ext.trainers.schedules import Schedule, with_schedule
from nnunet_ext.trainers.stdnet import STDNetTrainer, STDNetTrainer_noTemporal, STDNetTrainer_paperProtocol


class STDNetTrainer_paperProtocolNoTemporal(STDNetTrainer_paperProtocol):
    """The paper protocol without the temporal modeler (mean over phases), so that the ablation is measured under
    the same recipe as the full model."""

    variant = "noTemporal"


LEARNING_CHECK_SCHEDULES = {
    "lc600": Schedule(30, 20, 4, mirroring=False),
    "lc300": Schedule(15, 20, 4, mirroring=False),  # DeSamba's check: eight methods x two seeds in about an hour
    "lcsmoke": Schedule(1, 2, 1, mirroring=False),
}
LEARNING_CHECK_BASES = (nnUNetTrainer, EarlyFusionTrainer, STDNetTrainer, STDNetTrainer_paperProtocol,
                        STDNetTrainer_noTemporal, STDNetTrainer_paperProtocolNoTemporal)

LEARNING_CHECK_TRAINERS = {f"{base.__name__}_{name}": with_schedule(base, name, schedule)
                           for base in LEARNING_CHECK_BASES for name, schedule in LEARNING_CHECK_SCHEDULES.items()}
globals().update(LEARNING_CHECK_TRAINERS)

# DeSamba's learning check (benchmarks/desamba_learning_check.py): the early-fusion comparator with clinical features,
# DeSamba and its six ablations, on the same schedules. Kept apart from LEARNING_CHECK_BASES (the STD-Net check's).
from nnunet_ext.trainers.desamba import DESAMBA_TRAINERS  # noqa: E402
from nnunet_ext.trainers.early_fusion import EarlyFusionTrainer_tabular  # noqa: E402

DESAMBA_LEARNING_CHECK_BASES = (EarlyFusionTrainer_tabular, *DESAMBA_TRAINERS)
DESAMBA_LEARNING_CHECK_TRAINERS = {f"{base.__name__}_{name}": with_schedule(base, name, schedule)
                                   for base in DESAMBA_LEARNING_CHECK_BASES
                                   for name, schedule in LEARNING_CHECK_SCHEDULES.items()}
globals().update(DESAMBA_LEARNING_CHECK_TRAINERS)
