"""The training loss is Dice + binary focal weighted 0.5 / 0.5 (MONAI), and it can tell good from bad."""

import pytest
import torch
from monai.losses import DiceLoss, FocalLoss

from services.spec import load_organ_spec
from trainer.loop import TrainConfig, Trainer, dice_score


def test_dicefocal_is_half_dice_plus_half_focal():
    loss = Trainer.build_loss(type("T", (), {"cfg": TrainConfig()})())
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    expected = 0.5 * DiceLoss(sigmoid=True)(logits, target) + 0.5 * FocalLoss(gamma=2.0)(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    assert loss(target * 20 - 10, target) < loss(-(target * 20 - 10), target)


def test_batch_dice_weighs_each_crop_by_its_pixels():
    """A crop with a few target pixels, all missed, beside a crop whose large target is found: per crop the
    miss is half the Dice term; over the batch's pixels it is a few pixels of many."""
    per_crop, over_batch = (
        Trainer.build_loss(type("T", (), {"cfg": TrainConfig(loss=loss)})())
        for loss in ("dicefocal", "dicefocal-batch")
    )
    target = torch.zeros(2, 1, 16, 16)
    target[0, 0, :2, :2] = 1  # 4 pixels, missed below
    target[1, 0, :, :8] = 1  # 128 pixels, found
    logits = torch.full_like(target, -10.0)
    logits[1, 0, :, :8] = 10.0
    focal = FocalLoss(gamma=2.0)(logits, target)
    torch.testing.assert_close(
        per_crop(logits, target), 0.5 * DiceLoss(sigmoid=True)(logits, target) + 0.5 * focal
    )
    torch.testing.assert_close(
        over_batch(logits, target), 0.5 * DiceLoss(sigmoid=True, batch=True)(logits, target) + 0.5 * focal
    )
    assert over_batch(logits, target) < 0.05 < 0.2 < per_crop(logits, target)


def test_an_unknown_loss_is_refused_by_name():
    with pytest.raises(KeyError, match="dicefocal-batch"):
        Trainer.build_loss(type("T", (), {"cfg": TrainConfig(loss="lovasz")})())


def test_dice_score():
    a = torch.zeros(4, 4, dtype=torch.bool)
    assert dice_score(a, a) == 1.0
    b = a.clone()
    b[:2] = True
    assert dice_score(b, b) == 1.0
    assert dice_score(b, a) == 0.0
    c = a.clone()
    c[:1] = True
    assert abs(dice_score(b, c) - 2 * 4 / 12) < 1e-9


def test_organ_specs_load():
    assert load_organ_spec("liver").channels == 1
    assert load_organ_spec("cells").inference.mode == "whole"
