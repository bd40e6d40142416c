"""Trainers of the TexLiverNet text check (benchmarks/texlivernet_text_check.py), on its own CPU schedule.

``textcheck``: 20 epochs x 50 iterations (1000 training iterations), 5 validation iterations per epoch, no test-time
mirroring; ``TEXTCHECK_EPOCHS`` / ``TEXTCHECK_ITERATIONS`` override the first two (the check script sets them from its
arguments and records them). Load with
``export nnUNet_extTrainer=$(nnunet-ext trainer-path):$PWD/benchmarks/trainers`` (the check script does this
itself). nnU-Net imports this file as a top-level module: absolute imports only.
"""

from __future__ import annotations

import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.schedules import Schedule, with_schedule
from nnunet_ext.trainers.texlivernet import TexLiverNetTrainer, TexLiverNetTrainer_noText

TEXT_CHECK = Schedule(int(os.environ.get("TEXTCHECK_EPOCHS", 20)), int(os.environ.get("TEXTCHECK_ITERATIONS", 50)), 5,
                      mirroring=False, progress_bar=True)

nnUNetTrainer_textcheck = with_schedule(nnUNetTrainer, "textcheck", TEXT_CHECK)
TexLiverNetTrainer_textcheck = with_schedule(TexLiverNetTrainer, "textcheck", TEXT_CHECK)
TexLiverNetTrainer_noText_textcheck = with_schedule(TexLiverNetTrainer_noText, "textcheck", TEXT_CHECK)
