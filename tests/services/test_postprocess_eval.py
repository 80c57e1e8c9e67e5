"""tools.postprocess_eval --cv: every post-processing option scored on each fold's held-out volume, per slice
(as the CV table) and as one volume, with its change against none."""

from __future__ import annotations

import numpy as np
import pytest

from tools.postprocess_eval import OPTIONS, evaluate_cv, markdown_cv, slice_mean_dice


def fold(island: bool, hole: bool) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of a small held-out volume: the labelled organ, predicted at 0.9 with an
    island of 0.9 away from it and/or a hole of 0.1 inside it."""
    labels = np.zeros((4, 32, 32), bool)
    labels[:, 6:22, 6:22] = True
    probs = np.where(labels, 0.9, 0.05).astype(np.float32)
    if island:
        probs[1:3, 26:30, 26:30] = 0.9
    if hole:
        probs[:, 12:16, 12:16] = 0.1  # a vessel through every slice: a hole in each, open in 3-D
    return probs, labels


def test_each_option_is_scored_against_none_per_slice_and_per_volume():
    folds = [fold(island=True, hole=False), fold(island=False, hole=True)]
    rows = {r["option"]: r for r in evaluate_cv(folds)}
    assert list(rows) == list(OPTIONS)
    none, both = rows["none"], rows["largest component + fill holes"]
    assert none["slice_dice_per_fold_at_0.5"] == [slice_mean_dice(p >= 0.5, g) for p, g in folds]
    assert none["slice_dice_per_fold_at_0.5"][0] < 1.0 and none["slice_dice_per_fold_at_0.5"][1] < 1.0
    assert both["slice_dice_per_fold_at_0.5"] == [1.0, 1.0]  # the island dropped, the hole filled
    assert rows["largest component"]["slice_dice_per_fold_at_0.5"] == [
        1.0,
        none["slice_dice_per_fold_at_0.5"][1],
    ]
    assert rows["fill holes (per slice)"]["volume_dice_per_fold_at_0.5"][1] == 1.0
    assert both["delta_slice_dice_at_0.5"] == pytest.approx(1.0 - none["slice_dice_at_0.5"])
    assert none["delta_volume_dice_at_0.5"] == 0.0
    table = markdown_cv(list(rows.values()))
    assert (
        table.count("\n") == len(OPTIONS) + 1
        and "| largest component + fill holes | 1.0000 / 1.0000 |" in table
    )
