"""Thresholds, masks and overlap scores on the organ server's 8-bit probability map.

A segmentation stores only its probability map: every mask (`mask_png`), the areas at every threshold
(`areas`, counted from it) and the thumbnail (scoring.thumbnail_png) are pure functions of it, made again when
asked for. Rows written before kept their masks in a zip (`MASKS_OBJECT`, read by `unpack_mask`).
"""

from __future__ import annotations

import functools
import io
import zipfile

import numpy as np

from common.errors import InvalidInput
from services.imaging import encode_png

# The contract's thresholds: 0.2, 0.3 … 0.8 (one mask each).
THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.1 * i, 1) for i in range(7))


def probability_mask(prob_u8: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of pixels whose probability (byte / 255) is at least `threshold`."""
    return prob_u8 >= byte_cutoff(threshold)


def labels_at(fg_u8: np.ndarray, label_u8: np.ndarray | None, threshold: float) -> np.ndarray:
    """The label map (uint8: 0 background, i for the organ's i-th label) at `threshold`: THE rule of
    thresholds for an organ of N labels. A voxel is labelled when the probability that it is any of the
    labels, 1 − p(background) (`fg_u8`, byte / 255), is at least `threshold`; it takes the label whose
    probability is the largest (`label_u8`, 1..N; None for a one-label organ: 1). With one label this is
    the binary rule p ≥ t; with N labels the seven thresholds give seven nested label maps (a voxel labelled
    at 0.6 is labelled, with the same label, at 0.5), so volumes fall as the threshold rises."""
    return label_map(probability_mask(fg_u8, threshold), label_u8)


def label_map(mask: np.ndarray, label_u8: np.ndarray | None) -> np.ndarray:
    """`labels_at` once the foreground `mask` is known (and perhaps post-processed): uint8 `label_u8` inside
    it (1 everywhere when None), 0 outside."""
    if label_u8 is None:
        return mask.astype(np.uint8)
    return np.where(mask, label_u8, 0).astype(np.uint8)


def split_classes(probs_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D organ's softmax answer, uint8 (N + 1, …) with background first, as (the foreground probability
    1 − p(background) in bytes, the label 1..N of largest probability) — all `labels_at` needs."""
    probs_u8 = np.asarray(probs_u8)
    foreground = (255 - probs_u8[0]).astype(np.uint8)
    label = (np.argmax(probs_u8[1:], axis=0) + 1).astype(np.uint8)
    return foreground, label


def mask_png(prob_u8: np.ndarray, threshold: float) -> bytes:
    """The 0/255 grey PNG of the mask at `threshold`: the segment answer's and, made again from the stored
    map, the stored result's (the same bytes: the encoder is deterministic)."""
    return encode_png(probability_mask(prob_u8, threshold))


@functools.lru_cache(maxsize=64)
def byte_cutoff(threshold: float) -> int:
    """The smallest byte b with b / 255 >= threshold (256: none), found with that very float comparison, so
    comparing bytes gives exactly the mask the float division would, without dividing every pixel."""
    passing = np.flatnonzero(np.arange(256, dtype=np.float64) / 255.0 >= threshold)
    return int(passing[0]) if passing.size else 256


def areas(prob_u8: np.ndarray) -> dict[str, int]:
    """The mask area in pixels at every threshold ("0.2" … "0.8"): the pixels at or above each threshold's
    byte cutoff, counted (label_counts)."""
    return {t: int(counts[0]) for t, counts in label_counts(prob_u8, None, 1).items()}


def label_counts(fg_u8: np.ndarray, label_u8: np.ndarray | None, n_labels: int) -> dict[str, np.ndarray]:
    """Voxels of each label 1..`n_labels` in `labels_at(fg_u8, label_u8, t)` at every threshold ("0.2" …
    "0.8"), no label map made: one comparison with each threshold's byte cutoff, counted (a histogram of a
    200×512² volume by np.bincount took 1.4 s, its int64 copy of every voxel included; this 0.15 s)."""
    fg = np.asarray(fg_u8, dtype=np.uint8)
    counts = {}
    for t in THRESHOLDS:
        at_or_above = fg >= byte_cutoff(t)
        if label_u8 is None:
            counts[f"{t:.1f}"] = np.array([np.count_nonzero(at_or_above)], np.int64)
        else:
            per_label = np.bincount(np.asarray(label_u8)[at_or_above], minlength=n_labels + 1)
            counts[f"{t:.1f}"] = per_label[1 : n_labels + 1].astype(np.int64)
    return counts


def grid_threshold(threshold: float, *, what: str = "threshold", code: str = "invalid_threshold") -> float:
    """`threshold` as the grid value it names (0.5 for 0.5 or 0.50); 400 `code` for anything off the grid."""
    nearest = round(threshold, 1)
    if nearest not in THRESHOLDS or abs(threshold - nearest) > 1e-9:
        raise InvalidInput(
            f"{what} must be one of {', '.join(f'{t:.1f}' for t in THRESHOLDS)}, not {threshold}", code=code
        )
    return nearest


def selection(value: str | None) -> tuple[float, ...]:
    """The masks a segment answer carries, from the request's `masks`: "all" (also when absent or empty, the
    contract's default), "none", or thresholds of the grid separated by commas ("0.5,0.7"), answered in
    ascending order once each. Anything else is a 400 `invalid_masks`."""
    text = (value or "").strip().lower()
    if text in ("", "all"):
        return THRESHOLDS
    if text == "none":
        return ()
    chosen = set()
    for part in text.split(","):
        try:
            chosen.add(grid_threshold(float(part), what="each of masks", code="invalid_masks"))
        except ValueError:  # float(): not a number
            raise InvalidInput(
                f"masks must be all, none or thresholds of {', '.join(f'{t:.1f}' for t in THRESHOLDS)} "
                f"separated by commas (e.g. 0.5,0.7), not {value[:70]!r}",
                code="invalid_masks",
            ) from None
    return tuple(sorted(chosen))


def nearest_threshold(value: float) -> float:
    """The grid threshold nearest `value` (the lower one on a tie), e.g. for a default of 0.45."""
    return min(THRESHOLDS, key=lambda t: (abs(t - value), t))


def stability(areas_px: dict[str, int]) -> float:
    """Dice between the masks at 0.2 and 0.8 (areas by threshold "0.2" … "0.8"). Both threshold one
    probability map, so the 0.8 mask lies inside the 0.2 mask and their overlap is the 0.8 area: the areas
    alone give the Dice, no pixels read."""
    low, high = areas_px["0.2"], areas_px["0.8"]
    return 1.0 if low + high == 0 else 2.0 * high / (low + high)


# Rows written before the masks were derived name their masks' object in `mask_keys`: a zip (stored, not
# deflated: PNGs are compressed already) of the PNGs the answer carried, one member per threshold, or, before
# that, one PNG per threshold. They are read as they are; nothing writes them any more.
MASKS_OBJECT = "masks.zip"


def mask_member(threshold: float) -> str:
    return f"mask_{threshold:.1f}.png"


def pack_masks(pngs: dict[float, bytes]) -> bytes:
    """The masks zip of rows written before (tests make such rows with it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for threshold, png in pngs.items():
            archive.writestr(zipfile.ZipInfo(mask_member(threshold), date_time=(1980, 1, 1, 0, 0, 0)), png)
    return buf.getvalue()


def unpack_mask(key: str, blob: bytes, threshold: float) -> bytes:
    """The mask PNG at `threshold` from the object stored at `key`: a member of a masks zip, or (rows
    written before masks were packed) the object itself."""
    if not key.endswith(".zip"):
        return blob
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return archive.read(mask_member(threshold))
