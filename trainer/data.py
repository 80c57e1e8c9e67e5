"""In-memory 2-D training data: image/mask pairs, their patient groups, the folds that never split a group,
batches on the organ's preprocessing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.datasets import GROUPS_FILE, MANIFEST, manifest_groups, parse_groups
from services.preprocess import resize, to_channels
from services.spec import SERVICES_DIR, OrganSpec, load_recipe
from trainer.groups import grouped_kfold_indices, volume_groups

log = logging.getLogger(__name__)


def layout_of(root: str | Path) -> str:
    """ "split" when the folder has images/ and masks/, "nifti" when it has images/ and labels/ (volumes:
    trainer.volumes), else "paired" (services.spec.DATA_LAYOUTS)."""
    root = Path(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "split"
    return "nifti" if (root / "images").is_dir() and (root / "labels").is_dir() else "paired"


def recipe_data(organ: str, services_dir: Path = SERVICES_DIR) -> Path:
    """The organ's default training data (its recipe's data.train), checked to be in the recipe's layout.
    The project's labelled data lives beside the repository (../shared/data), never inside it."""
    recipe = load_recipe(organ, services_dir)
    root = recipe.data.train
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} (data.train of {recipe.path}) is not a folder: fetch the data or pass --data"
        )
    if layout_of(root) != recipe.data.layout:
        raise FileNotFoundError(
            f"{root} is in the {layout_of(root)!r} layout, but {recipe.path} says "
            f"data.layout: {recipe.data.layout}"
        )
    return root


def find_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for both layouts we accept: `X.png` + `X_mask.png`, or `images/X` + `masks/X`."""
    root = Path(root)
    if layout_of(root) == "split":
        pairs = [
            (p.stem, p, root / "masks" / p.name) for p in sorted((root / "images").iterdir()) if p.is_file()
        ]
    else:
        pairs = [
            (p.stem, p, p.with_name(f"{p.stem}_mask{p.suffix}"))
            for p in sorted(root.glob("*.png"))
            if not p.stem.endswith("_mask")
        ]
    missing = [str(m) for _, _, m in pairs if not m.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) without a mask, e.g. {missing[0]}")
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs under {root}")
    return pairs


def kfold_indices(n: int, folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed K-fold split (4:1 for 5 folds): (train indices, validation indices)."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    order = np.random.default_rng(seed).permutation(n)
    val = np.sort(np.array_split(order, folds)[fold])
    train = np.sort(np.setdiff1d(order, val))
    return train, val


@dataclass(frozen=True)
class Groups:
    """The patient (or volume) of every pair and where that came from: "dataset" (the dataset's
    manifest or groups.csv names them), "volumes" (found from the images: trainer.groups.volume_groups)
    or "pairs" (every pair its own patient, as the recipe says of one tile per patient)."""

    labels: list[str]
    source: str

    def describe(self) -> str:
        n = len(set(self.labels))
        if n < 2:
            return (
                f"one group only ({self.source}): shuffled pairs, so the validation pairs are not from an "
                "unseen patient"
            )
        return {
            "dataset": f"by the {n} groups (patients/volumes) the dataset names",
            "volumes": f"by volume: {n} volume(s) found from the images (a new volume starts where "
            "consecutive slices jump; trainer.groups.volume_groups)",
            "pairs": f"by pair: every one of the {n} pairs is its own patient (the recipe's data.groups)",
        }[self.source]


def dataset_groups(root: str | Path) -> dict[str, str] | None:
    """{pair name: group} when the dataset names its groups: a fetched dataset's manifest.json, or a
    groups.csv in the folder (common.datasets.parse_groups checks it names every pair once)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        groups = manifest_groups(json.loads((root / MANIFEST).read_text()))
        if groups:
            return groups
    if (root / GROUPS_FILE).is_file():
        names = [name for name, _, _ in find_pairs(root)]
        return parse_groups(
            (root / GROUPS_FILE).read_text(encoding="utf-8-sig"), names, str(root / GROUPS_FILE)
        )
    return None


def pair_groups(root: str | Path, pairs: PairSet, rule: str = "pairs") -> Groups:
    """The groups of the loaded `pairs` of `root`: the dataset's own when it names them, else by `rule`
    (services.spec.DATA_GROUPINGS, the recipe's data.groups)."""
    named = dataset_groups(root)
    if named is not None:
        return Groups([named[n] for n in pairs.names], "dataset")
    if rule == "volumes":
        found = volume_groups([img[0].numpy() for img in pairs.images])
        return Groups([f"volume-{g}" for g in found], "volumes")
    if rule == "pairs":
        return Groups(list(pairs.names), "pairs")
    raise ValueError(f"unknown grouping {rule!r}; valid: dataset groups, volumes, pairs")


def fold_count(groups: Groups, folds: int) -> int:
    """How many folds a split into `folds` has: leave-one-group-out when there are fewer groups (and the
    shuffle's `folds` when there is only one group)."""
    n = len(set(groups.labels))
    return folds if n < 2 else min(folds, n)


def split_indices(groups: Groups, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) with no group on both sides. When every pair is its own group
    this is the seeded shuffle of kfold_indices (the split the cells models were trained on); with a single
    group there is no unseen patient to hold out, so it is that shuffle too (Groups.describe says so);
    otherwise trainer.groups.grouped_kfold_indices (leave-one-group-out with fewer groups than folds).
    One fold is every pair for training and none held out (a final model; its figures come from `make cv`)."""
    if folds == 1:
        if fold != 0:
            raise ValueError(f"one fold (every pair, nothing held out) is fold 0, not {fold}")
        return np.arange(len(groups.labels)), np.zeros(0, dtype=int)
    n = len(set(groups.labels))
    if n == len(groups.labels) or n < 2:
        return kfold_indices(len(groups.labels), folds, fold, seed)
    return grouped_kfold_indices(groups.labels, folds, fold)


@dataclass
class PairSet:
    """Images (N, C, H, W) uint8 at training size and masks (N, 1, H, W) uint8 {0,1}; for validation also
    the masks at the original size, so Dice is measured the way the served model is judged."""

    names: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    full_masks: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx) -> PairSet:
        idx = [int(i) for i in idx]
        return PairSet(
            [self.names[i] for i in idx], self.images[idx], self.masks[idx], [self.full_masks[i] for i in idx]
        )


def load_pairs(root: str | Path, spec: OrganSpec, limit: int | None = None) -> PairSet:
    """Load every pair, converted to the organ's channels and (for `resize` organs) its model input size."""
    pairs = find_pairs(root)[:limit]
    names, images, masks, full_masks = [], [], [], []
    for name, img_path, mask_path in pairs:
        img = np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float32) / 255.0
        arr = torch.from_numpy(to_channels(img, spec.channels).transpose(2, 0, 1).copy())[None]
        mask = torch.from_numpy((np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.float32))[
            None, None
        ]
        if arr.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"{name}: image {tuple(arr.shape[-2:])} and mask {tuple(mask.shape[-2:])} differ in size"
            )
        full_masks.append(mask[0, 0].to(torch.uint8))
        if spec.inference.mode == "resize":
            arr = resize(arr, spec.inference.size)
            mask = (resize(mask, spec.inference.size) > 0.5).float()
        names.append(name)
        images.append((arr[0] * 255).round().to(torch.uint8))
        masks.append(mask[0].to(torch.uint8))
    same = len({tuple(i.shape) for i in images}) == 1
    if not same:
        raise ValueError("images differ in size; for a 'whole' organ crop them to one size first")
    log.info("loaded %d pairs from %s at %s", len(names), root, tuple(images[0].shape))
    return PairSet(names, torch.stack(images), torch.stack(masks), full_masks)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 images scaled to [0, 1] (the organ spec's normalisation)."""
    x = images.float() / 255.0
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
