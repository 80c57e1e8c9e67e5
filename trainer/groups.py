"""Patient/volume groups for honest validation, and folds that never split a group.

Slices cut in order from one CT volume are near-twins (consecutive liver slices differ by ~6.6 grey levels on
average, random pairs by ~27), so a validation slice whose neighbour was trained on measures memory. When a
dataset does not name its volumes, they are found from the images themselves:

    a new volume starts where the mean absolute difference between two consecutive slices is more than
    JUMP_FACTOR times the median consecutive difference of the whole run.

On the 400 liver training slices the median is 6.6 and the two boundaries jump to 29.8 (161→162) and 27.0
(370→371); every other step stays below 9.6, so the rule finds three volumes with a wide margin either side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

JUMP_FACTOR = 2.0  # boundary steps are 4x the median on the liver set, ordinary steps at most 1.5x


def consecutive_differences(images: Sequence[np.ndarray]) -> np.ndarray:
    """Mean absolute grey-level difference between each image and the next (len(images) - 1 values)."""
    if len(images) < 2:
        return np.zeros(0, dtype=np.float64)
    shapes = {np.shape(a) for a in images}
    if len(shapes) != 1:
        raise ValueError(f"volume boundaries need images of one size; got {sorted(shapes)}")
    pairs = zip(images[:-1], images[1:], strict=True)
    return np.array([np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() for a, b in pairs])


def volume_groups(images: Sequence[np.ndarray], jump_factor: float = JUMP_FACTOR) -> list[int]:
    """A group number per image (0, 0, …, 1, 1, …): consecutive images belong to one volume until a jump."""
    diffs = consecutive_differences(images)
    if diffs.size == 0:
        return [0] * len(images)
    threshold = jump_factor * float(np.median(diffs))
    return [0, *np.cumsum(diffs > threshold).astype(int).tolist()]


def grouped_kfold_indices(
    groups: Sequence[str | int], folds: int = 5, fold: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) where no group is on both sides.

    With fewer groups than `folds` it is leave-one-group-out (one fold per group, so `fold` < the number of
    groups). Otherwise groups are dealt to folds largest first, each to the fold with the fewest images, so
    folds stay balanced in images, deterministically.
    """
    names = list(dict.fromkeys(groups))  # first-seen order: deterministic
    n_folds = min(folds, len(names))
    if not 0 <= fold < n_folds:
        raise ValueError(
            f"fold must be in 0..{n_folds - 1} ({len(names)} group(s), {folds} folds asked), got {fold}"
        )
    sizes = {name: sum(1 for g in groups if g == name) for name in names}
    load = [0] * n_folds
    fold_of: dict = {}
    for name in sorted(names, key=lambda g: (-sizes[g], names.index(g))):
        target = min(range(n_folds), key=lambda k: (load[k], k))
        fold_of[name] = target
        load[target] += sizes[name]
    in_val = np.array([fold_of[g] == fold for g in groups])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
