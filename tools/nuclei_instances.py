"""How well the nucleus counter (gateway/service/nuclei.py) separates nuclei in the cells model's held-out
masks: per tile the count against the reference, and how often touching nuclei are split
(docs/cells-instances.md).

    python -m tools.nuclei_instances [--mar model-store/cells.mar] [--distances 3 4 5 6 7] [--sigmas 0 1 2]

The ground truth. The MoNuSeg masks in ../shared/data are binary (0/255): touching nuclei were drawn into
one blob (12,679 connected blobs in the 30 tiles against the about 21,600 nuclei Kumar et al. annotated),
so instances cannot be read from them in full. What they do say for certain is used:

* two blobs of the expert mask are two different nuclei. Where the model's mask joins two or more of them
  into one connected blob ("touching in the prediction"), the counter must split it: a blob counts as
  split when one counted nucleus matches it 1:1 (IoU >= 0.5), merged when the nucleus holding most of it
  holds most of another too;
* a convex blob of the expert mask (solidity >= SINGLE_SOLIDITY) is one nucleus: it counts as kept when
  one counted nucleus matches it 1:1, over-split when two or more counted nuclei lie mostly inside it.

The per-tile count is compared with the reference count, the same counter on the expert mask (its total
is within a few % of Kumar et al.'s), and with the expert mask's connected blobs (a lower bound: every
blob is at least one nucleus); the reference isolates what the model's mask changes in the count.

Held-out predictions: the shipped model (its card's split: 24 training tiles, 6 validation tiles) through
the runtime its spec names, with the mirror images, as the organ server answers (8-bit map, mask at the
spec's default threshold as the gateway makes it). The counter's parameters (peak distance, smoothing of
the distance transform) are chosen on the 24 training tiles only (balanced: the mean of the split and kept
rates) and then reported on the 6 validation tiles. Areas are in µm² at 0.25 µm/px (MoNuSeg: 40× TCGA
scans; the PNGs carry no spacing, so this is the dataset's nominal figure, not read from the files).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from gateway.service.masks import probability_mask
from gateway.service.nuclei import MIN_AREA_PX, MIN_PEAK_DISTANCE_PX, SMOOTH_SIGMA_PX, split_nuclei
from services.preprocess import normalize, pad_to_multiple, probabilities, restore
from services.runtime import load_runtime
from trainer.cv import run_split
from trainer.export import organ_threads, unpack_runtimes

REPO_ROOT = Path(__file__).resolve().parents[1]
UM_PER_PX = 0.25  # MoNuSeg tiles: 40× TCGA scans (nominal; the PNGs carry no spacing)
SINGLE_SOLIDITY = 0.95  # a blob this convex is one nucleus
MATCH_IOU = 0.5


# --- predictions ---------------------------------------------------------------------------------------


def predict(mar: Path, cache: Path) -> tuple[dict[str, np.ndarray], list[str], list[str], str]:
    """The 8-bit probability map of every tile of the card's data (cached by the archive's hash), the
    training and validation tile names of its split, and the runtime that made them."""
    import json

    card = json.loads(mar.with_suffix(".json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        spec = unpack_runtimes(mar, Path(tmp))
        pairs, train_idx, val_idx = run_split("cells", card, spec)
        names = [Path(n).stem for n in pairs.names]
        digest = hashlib.sha256(mar.read_bytes()).hexdigest()[:12]
        where = cache / f"{digest}-{spec.runtime}"
        where.mkdir(parents=True, exist_ok=True)
        missing = [i for i, n in enumerate(names) if not (where / f"{n}.png").is_file()]
        if missing:
            threads = organ_threads("cells")
            torch.set_num_threads(threads)
            model = load_runtime(spec.runtime, Path(tmp), threads).model
            for i in missing:
                img = pairs.images[i : i + 1].float() / 255.0
                x, how = pad_to_multiple(normalize(img, spec), spec.inference.pad_multiple)
                with torch.inference_mode():
                    prob = restore(probabilities(model, x.contiguous(), spec), how)
                u8 = (prob.squeeze().numpy() * 255.0).round().astype(np.uint8)
                Image.fromarray(u8).save(where / f"{names[i]}.png")
                print(f"predicted {names[i]}", file=sys.stderr, flush=True)
    probs = {n: np.asarray(Image.open(where / f"{n}.png")) for n in names}
    return probs, [names[i] for i in train_idx], [names[i] for i in val_idx], spec.runtime


# --- scoring -------------------------------------------------------------------------------------------


def overlaps(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixels in common of every pair of labels (a > 0, b > 0) that meet."""
    both = (a > 0) & (b > 0)
    keys, counts = np.unique(a[both].astype(np.int64) * (int(b.max()) + 1) + b[both], return_counts=True)
    width = int(b.max()) + 1
    return {(int(k // width), int(k % width)): int(c) for k, c in zip(keys, counts, strict=True)}


def majority(inter: dict[tuple[int, int], int], areas_a: np.ndarray) -> dict[int, int]:
    """For each label of a, the label of b holding at least half of it (if one does)."""
    out = {}
    for (i, j), n in inter.items():
        if 2 * n >= areas_a[i]:
            out[i] = j
    return out


def single_blobs(truth_blobs: np.ndarray, count: int) -> set[int]:
    """The expert blobs convex enough to be one nucleus (solidity >= SINGLE_SOLIDITY)."""
    from skimage.measure import regionprops

    return {
        r.label for r in regionprops(truth_blobs) if r.area >= MIN_AREA_PX and r.solidity >= SINGLE_SOLIDITY
    }


@dataclass
class TileScore:
    name: str
    truth_blobs: int
    reference: int  # the counter on the expert mask
    counted: int  # the counter on the model's mask
    predicted_blobs: int  # the model's mask's connected blobs, unsplit
    touching: int  # expert blobs joined to another in the model's mask
    split: int
    merged: int
    singles: int  # convex expert blobs
    kept: int
    over_split: int
    median_um2: float  # counted nuclei
    reference_median_um2: float


def counted_labels(mask: np.ndarray, distance: int, sigma: float) -> np.ndarray:
    """The counter's labels with pieces under MIN_AREA_PX dropped (what count_nuclei counts)."""
    labels = split_nuclei(mask, min_distance=distance, smooth_sigma=sigma)
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero(areas < MIN_AREA_PX)
    labels[np.isin(labels, small[small > 0])] = 0
    return labels


def score_tile(
    name: str,
    truth: np.ndarray,
    predicted: np.ndarray,
    distance: int,
    sigma: float,
    truth_cache: dict,
    with_reference: bool = True,
) -> TileScore:
    """One tile's counts and splitting outcomes; the reference count (the counter on the expert mask) only
    `with_reference` (the tuning grid does not need it)."""
    if name not in truth_cache:
        blobs, n_blobs = ndimage.label(truth)
        truth_cache[name] = (blobs, n_blobs, single_blobs(blobs, n_blobs))
    blobs, n_blobs, singles = truth_cache[name]
    reference = counted_labels(truth, distance, sigma) if with_reference else np.zeros((1, 2), np.int32)
    pred_blobs, n_pred_blobs = ndimage.label(predicted)
    nuclei = counted_labels(predicted, distance, sigma)
    blob_area = np.bincount(blobs.ravel(), minlength=n_blobs + 1)
    nucleus_area = np.bincount(nuclei.ravel())
    # expert blobs that the model's mask joins: two or more with their majority in one predicted blob
    home = majority(overlaps(blobs, pred_blobs), blob_area)
    sharing: dict[int, list[int]] = {}
    for blob, pred_blob in home.items():
        sharing.setdefault(pred_blob, []).append(blob)
    touching = {b for group in sharing.values() if len(group) > 1 for b in group}
    inter = overlaps(blobs, nuclei)
    matched = {i for (i, j), n in inter.items() if n / (blob_area[i] + nucleus_area[j] - n) >= MATCH_IOU}
    holder = majority(inter, blob_area)  # the nucleus holding most of each expert blob
    held: dict[int, int] = {}
    for nucleus in holder.values():
        held[nucleus] = held.get(nucleus, 0) + 1
    merged = {b for b in touching if b not in matched and held.get(holder.get(b, 0), 0) > 1}
    inside = majority({(j, i): n for (i, j), n in inter.items()}, nucleus_area)  # nucleus → expert blob
    pieces: dict[int, int] = {}
    for blob in inside.values():
        pieces[blob] = pieces.get(blob, 0) + 1
    over = {b for b in singles if b not in matched and pieces.get(b, 0) >= 2}
    px_um2 = UM_PER_PX**2
    ref_areas = np.bincount(reference.ravel())[1:]
    return TileScore(
        name=name,
        truth_blobs=n_blobs,
        reference=int((ref_areas > 0).sum()),
        counted=int((nucleus_area[1:] > 0).sum()),
        predicted_blobs=n_pred_blobs,
        touching=len(touching),
        split=len(touching & matched),
        merged=len(merged),
        singles=len(singles),
        kept=len(singles & matched),
        over_split=len(over),
        median_um2=float(np.median(nucleus_area[1:][nucleus_area[1:] > 0])) * px_um2,
        reference_median_um2=float(np.median(ref_areas[ref_areas > 0])) * px_um2 if with_reference else 0.0,
    )


@dataclass
class Summary:
    tiles: int
    split_rate: float  # of expert blobs touching in the prediction
    merged_rate: float
    kept_rate: float  # of convex expert blobs
    over_split_rate: float
    count_mae: float  # against the reference count
    count_mean_rel: float

    @property
    def balanced(self) -> float:
        return (self.split_rate + self.kept_rate) / 2


def summarise(scores: list[TileScore]) -> Summary:
    touching = sum(s.touching for s in scores) or 1
    singles = sum(s.singles for s in scores) or 1
    errors = [abs(s.counted - s.reference) for s in scores]
    return Summary(
        tiles=len(scores),
        split_rate=sum(s.split for s in scores) / touching,
        merged_rate=sum(s.merged for s in scores) / touching,
        kept_rate=sum(s.kept for s in scores) / singles,
        over_split_rate=sum(s.over_split for s in scores) / singles,
        count_mae=float(np.mean(errors)),
        count_mean_rel=float(np.mean([e / max(s.reference, 1) for e, s in zip(errors, scores, strict=True)])),
    )


# --- the command ---------------------------------------------------------------------------------------


def load_truth(data: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.asarray(Image.open(data / "masks" / f"{n}.png").convert("L")) > 127 for n in names}


def _table(scores: list[TileScore]) -> str:
    rows = [
        "| tile | expert blobs | reference count | counted | error | unsplit blobs | touching split / merged"
        " | convex kept / over-split | median area µm² (ref) |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for s in scores:
        rows.append(
            f"| {s.name} | {s.truth_blobs} | {s.reference} | {s.counted} | {s.counted - s.reference:+d} "
            f"| {s.predicted_blobs} | {s.split}/{s.touching} · {s.merged}/{s.touching} "
            f"| {s.kept}/{s.singles} · {s.over_split}/{s.singles} "
            f"| {s.median_um2:.1f} ({s.reference_median_um2:.1f}) |"
        )
    return "\n".join(rows)


def _describe(label: str, m: Summary) -> str:
    return (
        f"{label}: {m.tiles} tiles; touching nuclei split {m.split_rate:.1%}, merged {m.merged_rate:.1%}; "
        f"convex nuclei kept whole {m.kept_rate:.1%}, over-split {m.over_split_rate:.1%}; "
        f"count error vs reference MAE {m.count_mae:.1f}, mean relative {m.count_mean_rel:.1%}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=REPO_ROOT / "model-store" / "cells.mar")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / ".medseg" / "nuclei-probs")
    parser.add_argument("--distances", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--baseline",
        type=float,
        nargs=2,
        default=[4, 0],
        metavar=("DISTANCE", "SIGMA"),
        help="a setting to compare on the held-out tiles (default: the counter's before this measurement)",
    )
    args = parser.parse_args(argv)
    from tests.data import CELLS_TRAIN

    probs, train, val, runtime = predict(args.mar, args.cache)
    truth = load_truth(CELLS_TRAIN, train + val)
    masks = {n: probability_mask(p, args.threshold) for n, p in probs.items()}
    cache: dict = {}

    def run(names, distance, sigma, with_reference=True):
        return [score_tile(n, truth[n], masks[n], distance, sigma, cache, with_reference) for n in names]

    print(f"model {args.mar.name} through {runtime}, mirror images, mask at {args.threshold}")
    print("\nchosen on the 24 training tiles (balanced = mean of split and kept rates):\n")
    print("| peak distance px | smoothing σ px | split | merged | kept | over-split | balanced |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    best = None
    for distance, sigma in itertools.product(args.distances, args.sigmas):
        m = summarise(run(train, distance, sigma, with_reference=False))
        print(
            f"| {distance} | {sigma:g} | {m.split_rate:.1%} | {m.merged_rate:.1%} | {m.kept_rate:.1%} "
            f"| {m.over_split_rate:.1%} | {m.balanced:.1%} |",
            flush=True,
        )
        if best is None or m.balanced > best[0]:
            best = (m.balanced, distance, sigma)
    _, distance, sigma = best
    print(
        f"\nbest on training tiles: peak distance {distance} px, σ {sigma:g} px "
        f"(the counter's defaults: {MIN_PEAK_DISTANCE_PX} px, σ {SMOOTH_SIGMA_PX:g})"
    )
    settings = {f"held-out, chosen ({distance} px, σ {sigma:g})": (distance, sigma)}
    base_d, base_s = int(args.baseline[0]), args.baseline[1]
    if (base_d, base_s) != (distance, sigma):
        settings[f"held-out, baseline ({base_d} px, σ {base_s:g})"] = (base_d, base_s)
    for label, (d, s) in settings.items():
        scores = run(val, d, s)
        print(f"\n{label}:\n")
        print(_table(scores))
        print("\n" + _describe(label, summarise(scores)))
        unsplit = np.mean([abs(x.predicted_blobs - x.reference) / x.reference for x in scores])
        print(f"(without splitting, the model's connected blobs: mean relative count error {unsplit:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
