"""The training loss is Dice + binary focal weighted 0.5 / 0.5 (MONAI), and it can tell good from bad."""

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
