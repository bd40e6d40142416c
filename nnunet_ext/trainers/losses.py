"""Segmentation losses the papers train with, as nnU-Net loss modules and a trainer mixin that installs them.

nnU-Net trains with Dice + CE under deep supervision. The papers of the architectures here use other mixtures:
STD-Net ``0.5 Dice + 0.5 BCE``, TexLiverNet ``BCE + Dice`` at 8:2. :class:`DiceBCELoss` is that family;
:class:`DiceBCESegmentationLoss` puts it inside nnU-Net's deep-supervision wrapper (its weighting is kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn


class DiceBCELoss(nn.Module):
    """``a * (1 - Dice) + (1 - a) * BCE`` per foreground label (one-vs-rest on the softmax probabilities; sigmoid for
    nnU-Net region labels), averaged over labels. Dice with squared denominators (V-Net):
    ``2 sum(p y) / (sum(p^2) + sum(y^2))``, over the batch when ``batch_dice``.

    ``forward(logits, target)``: logits (B, C, *S); target (B, 1, *S) label map (or (B, R[+1], *S) regions, the
    last channel marking ignored voxels when ``has_ignore``) -> scalar.
    """

    def __init__(self, dice_weight: float = 0.5, batch_dice: bool = False, has_regions: bool = False,
                 ignore_label: int | None = None, smooth: float = 1e-5):
        super().__init__()
        self.dice_weight, self.batch_dice, self.has_regions = dice_weight, batch_dice, has_regions
        self.ignore_label, self.smooth = ignore_label, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.has_regions:
            mask = (1 - target[:, -1:]).float() if self.ignore_label is not None else None
            y = (target[:, :-1] if self.ignore_label is not None else target).float()
            p = torch.sigmoid(logits)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            labels = target[:, 0].long()
            mask = (labels != self.ignore_label).unsqueeze(1).float() if self.ignore_label is not None else None
            y = F.one_hot(labels.clamp(0, logits.shape[1] - 1), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
            log_all = torch.logsumexp(logits, 1, keepdim=True)
            log_p = logits[:, 1:] - log_all
            # log(1 - p_c) = logsumexp over the other classes - logsumexp over all
            others = torch.stack([torch.logsumexp(torch.cat((logits[:, :c], logits[:, c + 1:]), 1), 1)
                                  for c in range(1, logits.shape[1])], 1)
            log_not_p = others - log_all
            p = log_p.exp()
            bce = -(y * log_p + (1 - y) * log_not_p)
        if mask is not None:
            p, y, bce = p * mask, y * mask, bce * mask
            bce = bce.sum() / (mask.sum() * y.shape[1]).clamp_min(1)
        else:
            bce = bce.mean()
        dims = (0, *range(2, p.ndim)) if self.batch_dice else tuple(range(2, p.ndim))
        dice = (2 * (p * y).sum(dims) + self.smooth) / ((p * p).sum(dims) + (y * y).sum(dims) + self.smooth)
        return self.dice_weight * (1 - dice.mean()) + (1 - self.dice_weight) * bce


class DiceBCESegmentationLoss:
    """Trainer mixin (put before the trainer in the bases): the segmentation term is
    ``paper_dice_weight * (1 - Dice) + (1 - paper_dice_weight) * BCE`` (:class:`DiceBCELoss`), inside nnU-Net's
    deep-supervision wrapper."""

    paper_dice_weight: float = 0.5

    def _build_loss(self):
        loss = super()._build_loss()
        seg = DiceBCELoss(self.paper_dice_weight, bool(self.configuration_manager.batch_dice),
                          self.label_manager.has_regions, self.label_manager.ignore_label)
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = seg
            return loss
        return seg
