"""Volume groups found from the images, the trainer's groups (the dataset's own, else the recipe's rule),
and folds that never put one volume or patient on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.datasets import DatasetError
from services.spec import load_organ_spec
from trainer.cv import _reusable, run_split
from trainer.data import Groups, PairSet, fold_count, kfold_indices, load_pairs, pair_groups, split_indices
from trainer.groups import consecutive_differences, grouped_kfold_indices, volume_groups
from trainer.train import split_record

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


# --- the trainer's groups: the dataset's own, else the recipe's rule -----------------------------------
def _pairset(images: list[np.ndarray], names: list[str]) -> PairSet:
    stacked = torch.from_numpy(np.stack(images)[:, None].astype(np.uint8))
    return PairSet(names, stacked, torch.zeros_like(stacked), [torch.zeros(2, 2)] * len(names))


def _write_pairs(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"{name}_mask.png")


def test_the_recipe_rule_groups_pairs_when_the_dataset_names_none(tmp_path):
    rng = np.random.default_rng(2)
    images = _drifting_volume(rng, 6) + _drifting_volume(rng, 5)
    names = [f"{i:03d}" for i in range(11)]
    _write_pairs(tmp_path, names)
    volumes = pair_groups(tmp_path, _pairset(images, names), "volumes")
    assert volumes.source == "volumes" and volumes.labels == ["volume-0"] * 6 + ["volume-1"] * 5
    assert pair_groups(tmp_path, _pairset(images, names), "pairs").labels == names


def test_a_groups_csv_in_the_folder_wins_over_the_recipe_rule(tmp_path):
    names = ["a", "b", "c", "d"]
    _write_pairs(tmp_path, names)
    (tmp_path / "groups.csv").write_text("name,group\na,p1\nb,p1\nc,p2\nd,p3\n")
    images = [np.full((4, 4), 10 * i) for i in range(4)]
    groups = pair_groups(tmp_path, _pairset(images, names), "volumes")
    assert groups.source == "dataset" and groups.labels == ["p1", "p1", "p2", "p3"]
    (tmp_path / "groups.csv").write_text("name,group\na,p1\n")
    with pytest.raises(DatasetError, match=r"groups\.csv: 3 pair\(s\) without a group, e\.g\. 'b'"):
        pair_groups(tmp_path, _pairset(images, names), "pairs")


def test_a_fetched_datasets_manifest_names_the_groups(tmp_path):
    names = ["x", "y"]
    (tmp_path / "images").mkdir()
    (tmp_path / "manifest.json").write_text(
        json.dumps({"pairs": [{"name": "x", "group": "P-7"}, {"name": "y", "group": "P-9"}]})
    )
    groups = pair_groups(tmp_path, _pairset([np.zeros((4, 4))] * 2, names), "volumes")
    assert (groups.source, groups.labels) == ("dataset", ["P-7", "P-9"])


def test_splits_hold_out_whole_groups_and_keep_the_shuffle_for_one_pair_per_patient():
    volumes = Groups(["v0"] * 162 + ["v1"] * 209 + ["v2"] * 29, "volumes")
    assert fold_count(volumes, 5) == 3
    held_out = []
    for fold in range(3):
        train, val = split_indices(volumes, 5, fold, seed=0)
        assert not {volumes.labels[i] for i in train} & {volumes.labels[i] for i in val}
        held_out.append({volumes.labels[i] for i in val})
    assert sorted(map(sorted, held_out)) == [["v0"], ["v1"], ["v2"]]
    tiles = Groups([f"TCGA-{i}" for i in range(30)], "pairs")  # the cells models' split is unchanged
    for fold in range(5):
        assert all(
            np.array_equal(a, b)
            for a, b in zip(split_indices(tiles, 5, fold, 0), kfold_indices(30, 5, fold, 0), strict=True)
        )
    one = Groups(["volume-0"] * 10, "volumes")  # nobody unseen to hold out: the shuffle, and it says so
    assert fold_count(one, 5) == 5 and len(split_indices(one, 5, 0, 0)[1]) == 2
    assert "not from an unseen patient" in one.describe()


def test_a_runs_split_is_rebuilt_from_its_card(tmp_path):
    """trainer.cv.run_split (export, rescore, quantize) finds the same held-out pairs as the run did."""
    rng = np.random.default_rng(4)
    names = [f"{i:03d}" for i in range(9)]
    _write_pairs(tmp_path, names)
    slices = _drifting_volume(rng, 5) + _drifting_volume(rng, 4)
    for name, img in zip(names, slices, strict=True):
        Image.fromarray(img.astype(np.uint8)).resize((8, 8)).save(tmp_path / f"{name}.png")
    spec = load_organ_spec("cells")  # a `whole` organ: the pairs load at their own size
    pairs = load_pairs(tmp_path, spec)
    groups = pair_groups(tmp_path, pairs, "volumes")
    train_idx, val_idx = split_indices(groups, 5, 1, 0)
    card = {
        "dataset": {"pairs": 9},
        "split": split_record(groups, 5, 1, 0, val_idx),
    }
    assert card["split"]["folds"] == len(set(groups.labels)) >= 2
    _, train_again, val_again = run_split("cells", card, spec, tmp_path)
    assert np.array_equal(train_again, train_idx) and np.array_equal(val_again, val_idx)
    legacy = {"dataset": {"pairs": 9}, "split": {"folds": 3, "fold": 1, "seed": 0}}  # before groups
    assert np.array_equal(run_split("cells", legacy, spec, tmp_path)[2], kfold_indices(9, 3, 1, 0)[1])
    # `make cv --reuse-shipped` counts a finished run only for the fold it held out
    run = tmp_path / "run"
    run.mkdir()
    (run / "card.json").write_text(json.dumps(card))
    assert _reusable("cells", run, tmp_path, groups, 5, 1)
    assert not _reusable("cells", run, tmp_path, groups, 5, 0)
