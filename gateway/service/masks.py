"""Thresholds, masks and overlap scores on the organ server's 8-bit probability map."""

from __future__ import annotations

import functools
import io
import zipfile

import numpy as np

# The contract's thresholds: 0.2, 0.3 … 0.8 (one mask each).
THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.1 * i, 1) for i in range(7))


def probability_mask(prob_u8: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of pixels whose probability (byte / 255) is at least `threshold`."""
    return prob_u8 >= byte_cutoff(threshold)


@functools.lru_cache(maxsize=64)
def byte_cutoff(threshold: float) -> int:
    """The smallest byte b with b / 255 >= threshold (256: none), found with that very float comparison, so
    comparing bytes gives exactly the mask the float division would, without dividing every pixel."""
    passing = np.flatnonzero(np.arange(256, dtype=np.float64) / 255.0 >= threshold)
    return int(passing[0]) if passing.size else 256


def nearest_threshold(value: float) -> float:
    """The grid threshold nearest `value` (the lower one on a tie), e.g. for a default of 0.45."""
    return min(THRESHOLDS, key=lambda t: (abs(t - value), t))


def stability(areas_px: dict[str, int]) -> float:
    """Dice between the masks at 0.2 and 0.8 (areas by threshold "0.2" … "0.8"). Both threshold one
    probability map, so the 0.8 mask lies inside the 0.2 mask and their overlap is the 0.8 area: the areas
    alone give the Dice, no pixels read."""
    low, high = areas_px["0.2"], areas_px["0.8"]
    return 1.0 if low + high == 0 else 2.0 * high / (low + high)


# A segmentation's seven masks are stored as one object, a zip (stored, not deflated: PNGs are compressed
# already) of the very PNGs the answer carried, one member per threshold. One write instead of seven.
MASKS_OBJECT = "masks.zip"


def mask_member(threshold: float) -> str:
    return f"mask_{threshold:.1f}.png"


def pack_masks(pngs: dict[float, bytes]) -> bytes:
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
