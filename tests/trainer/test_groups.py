"""Volume groups found from the images, and folds that never put one volume on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.groups import consecutive_differences, grouped_kfold_indices, volume_groups

LIVER = Path(__file__).resolve().parents[3] / "shared" / "data" / "liver" / "train"


def _drifting_volume(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n slices of one synthetic volume: each slice is the previous one plus a little noise."""
    base = rng.integers(0, 255, size=(32, 32)).astype(np.float32)
    slices = []
    for _ in range(n):
        base = np.clip(base + rng.normal(0, 4, size=base.shape), 0, 255)
        slices.append(base.copy())
    return slices


def test_a_jump_between_two_volumes_starts_a_new_group():
    rng = np.random.default_rng(0)
    images = _drifting_volume(rng, 12) + _drifting_volume(rng, 7)
    assert volume_groups(images) == [0] * 12 + [1] * 7


def test_one_volume_is_one_group_and_short_runs_are_handled():
    rng = np.random.default_rng(1)
    assert volume_groups(_drifting_volume(rng, 10)) == [0] * 10
    assert volume_groups([np.zeros((4, 4))]) == [0]
    assert volume_groups([]) == []


def test_images_of_different_sizes_are_refused_with_the_sizes_named():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(5, 5\)"):
        consecutive_differences([np.zeros((4, 4)), np.zeros((5, 5))])


def test_the_liver_training_slices_are_three_volumes():
    names = sorted(p for p in LIVER.glob("*.png") if not p.stem.endswith("_mask"))
    if not names:
        pytest.skip(f"no liver training data at {LIVER}")
    images = [np.asarray(Image.open(p).convert("L"), dtype=np.float32)[::4, ::4] for p in names]
    groups = volume_groups(images)
    starts = [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]]
    assert starts == [162, 371]


def test_grouped_folds_never_split_a_group_and_cover_every_image_once():
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2 + ["e"] * 6 + ["f"] * 1
    seen = []
    for fold in range(5):
        train, val = grouped_kfold_indices(groups, folds=5, fold=fold)
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        assert sorted([*train, *val]) == list(range(len(groups)))
        seen.extend(val.tolist())
    assert sorted(seen) == list(range(len(groups)))


def test_fewer_groups_than_folds_is_leave_one_group_out():
    groups = [0] * 162 + [1] * 209 + [2] * 29
    vals = [set(grouped_kfold_indices(groups, folds=5, fold=k)[1].tolist()) for k in range(3)]
    assert sorted(len(v) for v in vals) == [29, 162, 209]
    with pytest.raises(ValueError, match="0..2"):
        grouped_kfold_indices(groups, folds=5, fold=3)
