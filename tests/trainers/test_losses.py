"""The papers' Dice + BCE segmentation loss against its definition, with the ignore label and regions."""

from __future__ import annotations

import torch


def _naive_dice_bce(logits, labels, a):
    p = torch.softmax(logits, 1)[:, 1:]
    y = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    bce = torch.nn.functional.binary_cross_entropy(p, y)
    dims = tuple(range(2, p.ndim))
    dice = 2 * (p * y).sum(dims) / ((p * p).sum(dims) + (y * y).sum(dims))
    return a * (1 - dice.mean()) + (1 - a) * bce


def test_dice_bce_matches_its_definition():
    from nnunet_ext.trainers.losses import DiceBCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 6)
    labels = torch.randint(0, 3, (2, 4, 6, 6))
    loss = DiceBCELoss(0.3, smooth=0.0)(logits, labels[:, None].float())
    torch.testing.assert_close(loss, _naive_dice_bce(logits, labels, 0.3), rtol=1e-5, atol=1e-6)
    perfect = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() * 40 - 20
    assert DiceBCELoss(0.5)(perfect, labels[:, None].float()) < 1e-6


def test_dice_bce_masks_the_ignore_label_and_handles_regions():
    from nnunet_ext.trainers.losses import DiceBCELoss

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 4, 4)
    labels = torch.randint(0, 3, (1, 2, 4, 4))
    with_ignore = labels.clone()
    with_ignore[:, 0] = 3  # ignore label = highest label
    masked = DiceBCELoss(0.5, ignore_label=3)(logits, with_ignore[:, None].float())
    cropped = DiceBCELoss(0.5)(logits[:, :, 1:], labels[:, None, 1:].float())
    torch.testing.assert_close(masked, cropped, rtol=1e-4, atol=1e-5)
    # regions: sigmoid per region channel, against the formula written out
    regions = (torch.rand(1, 2, 2, 4, 4) > 0.5).float()
    region_logits = torch.randn(1, 2, 2, 4, 4, requires_grad=True)
    loss = DiceBCELoss(0.3, has_regions=True, smooth=0.0)(region_logits, regions)
    p = torch.sigmoid(region_logits)
    dice = 2 * (p * regions).sum((2, 3, 4)) / ((p * p).sum((2, 3, 4)) + (regions * regions).sum((2, 3, 4)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(region_logits, regions)
    torch.testing.assert_close(loss, 0.3 * (1 - dice.mean()) + 0.7 * bce, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert region_logits.grad.abs().sum() > 0
    # regions with nnU-Net's ignore channel (last target channel = 1 where ignored): as if those voxels were cut out
    ignore = torch.zeros(1, 1, 2, 4, 4)
    ignore[:, :, 0] = 1
    masked = DiceBCELoss(0.5, has_regions=True, ignore_label=3)(region_logits, torch.cat((regions, ignore), 1))
    cropped = DiceBCELoss(0.5, has_regions=True)(region_logits[:, :, 1:], regions[:, :, 1:])
    torch.testing.assert_close(masked, cropped, rtol=1e-4, atol=1e-5)
