"""The organs' recipes (services/<organ>/recipe.yaml) are the recipes the shipped models were trained with
(they were dicts in trainer/train.py and trainer/data.py, and figures in the Makefile, until the move)."""

from __future__ import annotations

import shutil

import pytest

from services.spec import SERVICES_DIR, load_recipe
from trainer.augment import AugmentConfig
from trainer.data import recipe_data
from trainer.loop import TrainConfig
from trainer.train import default_config

SHARED_DATA = (
    SERVICES_DIR.parents[1] / "shared" / "data"
).resolve()  # as the recipe resolves it (a linked shared/)


def test_liver_trains_as_it_shipped():
    assert default_config("liver") == TrainConfig(
        arch="erunet",
        widths=(12, 24, 48),
        batch_size=8,
        time_budget_min=50.0,
        precision="bf16",
        augment=AugmentConfig(
            elastic=0.06,
            scale=(0.75, 1.3),
            rotate_deg=15.0,
            brightness=0.15,
            contrast=(0.75, 1.35),
            gamma=(0.7, 1.45),
            noise_std=0.05,
            blur_sigma=1.0,
        ),
    )
    assert load_recipe("liver").data.train == SHARED_DATA / "liver" / "train"
    assert load_recipe("liver").data.layout == "paired"
    assert load_recipe("liver").data.groups == "volumes"  # folds hold out whole CT volumes


def test_cells_trains_as_it_shipped():
    augment = AugmentConfig(
        crop=256,
        flips=True,
        rot90=True,
        rotate_deg=0.0,
        scale=(0.9, 1.1),
        translate=0.0,
        per_channel_jitter=0.08,
        hed_jitter=0.05,
        gamma=(0.85, 1.15),
    )
    assert default_config("cells") == TrainConfig(
        arch="erunet-cells",
        batch_size=8,
        samples_per_epoch=96,
        val_every=5,
        time_budget_min=56.0,
        precision="bf16",
        loss="dicefocal-batch",  # since cells 1.10
        augment=augment,
    )
    assert load_recipe("cells").data.train == SHARED_DATA / "monuseg" / "train"
    assert load_recipe("cells").data.layout == "split"
    assert load_recipe("cells").data.groups == "pairs"  # one tile per patient


def test_options_given_win_over_the_recipe():
    config = default_config("cells", arch="unet", time_budget_min=3.0, val_every=None)
    assert (config.arch, config.time_budget_min, config.val_every) == ("unet", 3.0, 5)


def test_the_hippocampus_trains_whole_volumes_in_bfloat16_and_the_command_line_wins():
    assert load_recipe("hippocampus").crop is None  # whole 48×64×48 volumes, as served
    assert default_config("hippocampus").precision == "bf16"
    assert default_config("hippocampus", precision="f32").precision == "f32"
    assert default_config("liver").precision == "bf16"
    assert default_config("cells").precision == "bf16"  # since cells 1.8
    assert default_config("cells", precision="f32").precision == "f32"
    assert TrainConfig().precision == "f32"  # a recipe without the field


def test_a_recipes_loss_is_trained_with_and_the_command_line_wins(tmp_path):
    services = tmp_path / "services"
    shutil.copytree(SERVICES_DIR / "liver", services / "spleen")
    recipe = services / "spleen" / "recipe.yaml"
    recipe.write_text(recipe.read_text() + "loss: dicefocal-batch\n")
    assert load_recipe("spleen", services).loss == "dicefocal-batch"
    assert default_config("spleen", services_dir=services).loss == "dicefocal-batch"
    assert default_config("spleen", services_dir=services, loss="bce").loss == "bce"
    assert default_config("liver").loss == TrainConfig().loss == "dicefocal"  # a recipe without the field


def test_the_recipes_data_is_found_in_its_layout():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found under {SHARED_DATA}")
    assert recipe_data("liver") == SHARED_DATA / "liver" / "train"
    assert recipe_data("cells") == SHARED_DATA / "monuseg" / "train"


def test_medseg_train_takes_a_loss_and_refuses_an_unknown_one(capsys):
    import argparse

    from trainer.cli import _train_config, add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--organ", "cells", "--loss", "bce"])
    assert _train_config(args).loss == "bce"
    assert _train_config(parser.parse_args(["train", "--organ", "cells"])).loss == "dicefocal-batch"
    assert _train_config(parser.parse_args(["train", "--organ", "liver"])).loss == "dicefocal"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--organ", "cells", "--loss", "dice"])
    assert "invalid choice: 'dice'" in capsys.readouterr().err
