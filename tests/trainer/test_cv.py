"""trainer.cv's summary of grouped folds: means per threshold, the threshold they favour, and each fold
scored at the threshold the other folds chose (the honest figure for a calibrated threshold)."""

from __future__ import annotations

import pytest

from trainer.ablation import table as ablation_table
from trainer.cv import GRID, fold_config, parse_args, summarize, table


def _row(fold: int, peak: str, group: str) -> dict:
    """A fold whose Dice peaks at threshold `peak` (0.90 there, 0.80 elsewhere)."""
    dice = {t: 0.9 if t == peak else 0.8 for t in GRID}
    return {
        "fold": fold,
        "validation_groups": {group: 10},
        "validation_pairs": 10,
        "val_dice_at_threshold": dice,
        "best_threshold": float(peak),
        "best_epoch": {"epoch": 3, "val_dice_at_threshold": dice},
        "minutes": 1.0,
        "epochs": 4,
    }


def test_the_calibrated_threshold_is_scored_on_folds_that_did_not_choose_it():
    rows = [_row(0, "0.3", "volume-1"), _row(1, "0.3", "volume-0"), _row(2, "0.6", "volume-2")]
    summary = summarize("liver", rows, default_threshold=0.5)
    assert summary["calibrated_threshold"] == 0.3
    assert summary["mean_val_dice"] == pytest.approx(0.8)  # at the card's default threshold, 0.5
    chosen = {h["fold"]: (h["threshold"], h["val_dice"]) for h in summary["threshold_chosen_on_other_folds"]}
    # fold 2 peaks at 0.6, but the other two folds choose 0.3 for it; folds 0 and 1 each get 0.3
    # (chosen by the other 0.3 fold against the 0.6 one: a tie, won by the lower threshold)
    assert chosen == {0: (0.3, 0.9), 1: (0.3, 0.9), 2: (0.3, 0.8)}
    assert summary["mean_val_dice_threshold_chosen_on_other_folds"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)
    text = table(summary)
    assert "| 2 | volume-2 (10) |" in text and text.splitlines()[-1].startswith("| mean |")


def test_the_ablation_table_has_a_column_per_held_out_volume_and_their_mean():
    rows = [
        {
            "variant": "U-Net",
            "parameters": 1000,
            "folds": {0: _row(0, "0.5", "volume-1"), 2: _row(2, "0.3", "volume-2")},
        }
    ]
    text = ablation_table(rows, [0, 2])
    assert "fold 0 (volume-1)" in text and "fold 2 (volume-2)" in text
    assert "| U-Net | 0.9000 | 0.8000 | 0.8500 | 4/4 | 1,000 |" in text


def test_the_command_line_overrides_the_recipe_for_every_fold_and_leaves_the_rest():
    recipe = fold_config(parse_args(["--organ", "liver"]))
    assert recipe.widths == (12, 24, 48) and recipe.augment.scale == (0.75, 1.3)
    cfg = fold_config(
        parse_args(
            ["--organ", "liver", "--widths", "12", "24", "48", "96", "--augment", '{"scale": [0.8, 1.2]}']
        )
    )
    assert cfg.widths == (12, 24, 48, 96)
    assert cfg.augment.scale == (0.8, 1.2)
    assert cfg.augment.rotate_deg == recipe.augment.rotate_deg and cfg.precision == recipe.precision
