"""A classification-primary trainer chooses checkpoint_best by the validation AUC, not by nnU-Net's pseudo-Dice."""

from __future__ import annotations

import math
import os

import torch


def test_classification_primary_trainer_keeps_the_best_auc_checkpoint(tiny_multiphase, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    import nnunet_ext.trainers as trainers
    from nnunet_ext.paths import ensure_trainer_path

    ensure_trainer_path()
    monkeypatch.setattr(trainers.EarlyFusionTrainer_smoke, "primary_task", "classification")
    tr = get_trainer_from_args(str(tiny_multiphase["id"]), "3d_fullres", 1, "EarlyFusionTrainer_smoke", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    os.makedirs(tr.output_folder, exist_ok=True)
    best = os.path.join(tr.output_folder, "checkpoint_best.pth")
    saved = []
    monkeypatch.setattr(type(tr), "save_checkpoint", lambda self, f: saved.append((self.current_epoch, f)))
    # epochs whose validation patches give these macro AUCs (NaN: no labeled lesion patches of two classes);
    # nnU-Net's pseudo-Dice rises every epoch and must not decide
    for epoch, (auc, dice) in enumerate([(0.6, 0.1), (0.9, 0.2), (float("nan"), 0.3), (0.5, 0.4)]):
        tr.current_epoch = epoch
        for key, value in (("cls_val_auc", auc), ("cls_val_accuracy", 0.5), ("cls_val_loss", 1.0),
                           ("mean_fg_dice", dice), ("dice_per_class_or_region", [dice]), ("train_losses", 1.0),
                           ("val_losses", 1.0), ("epoch_start_timestamps", 0.0)):
            tr.logger.log(key, value, epoch)
        tr.on_epoch_end()
    ema = tr.logger.get_value("ema_cls_val_auc", None)
    assert ema[:2] == [0.6, 0.9 * 0.6 + 0.1 * 0.9] and ema[2] == ema[1]  # NaN keeps the average
    assert math.isclose(ema[3], 0.9 * ema[2] + 0.1 * 0.5)
    best_epochs = [e for e, f in saved if f == best]
    assert best_epochs == [0, 1]  # the AUC rule; the rising pseudo-Dice alone saved nothing
    assert tr._best_primary == ema[1]
    log = open(tr.log_file, encoding="utf-8").read()
    assert "New best EMA validation macro AUC" in log and "Yayy! New best EMA pseudo Dice" not in log
