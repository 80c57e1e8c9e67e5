"""Liver CT volumes built from the liver training slices, for measurements and tests of volume serving.

The 400 liver training PNGs (../shared/data/liver/train, NNN.png + NNN_mask.png) are consecutive axial
slices of three patients' CT: 000–161 one patient, 162–370 another, 371–399 a third. Each PNG is an 8-bit
rendering of the window C60/W400, so its Hounsfield units are v × 400/255 − 140 (inside the window; what
the window clipped is lost). The PNGs' own orientation is the network's, so a stack of them is a
canonical volume (z, y, x) as services.volumes would give it.

    hu, labels = liver_volume(PATIENTS[0])    # float32 (162, 512, 512) HU, bool labels
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from services.imaging import decode_mask
from services.spec import load_recipe

# [first, stop) slice numbers of each patient's run of consecutive slices
PATIENTS: tuple[tuple[int, int], ...] = ((0, 162), (162, 371), (371, 400))
WINDOW = {"center": 60, "width": 400}  # what the PNGs were rendered with (services/liver/spec.yaml)


def train_dir() -> Path:
    return load_recipe("liver").data.train


def png_to_hu(grey: np.ndarray) -> np.ndarray:
    """8-bit window renderings → Hounsfield units (float32), computed in float64 as a DICOM's modality
    LUT is (slope 400/255, intercept −140), so a DICOM of the same slice decodes to the same values."""
    low = WINDOW["center"] - WINDOW["width"] / 2
    return (grey.astype(np.float64) * (WINDOW["width"] / 255.0) + low).astype(np.float32)


@lru_cache(maxsize=4)
def liver_volume(patient: tuple[int, int], folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32 (z, y, x), labels bool (z, y, x)) of one patient's run of slices [first, stop)."""
    folder = folder or train_dir()
    first, stop = patient
    greys, labels = [], []
    for n in range(first, stop):
        with Image.open(folder / f"{n:03d}.png") as im:
            greys.append(np.asarray(im.convert("L")))
        labels.append(decode_mask((folder / f"{n:03d}_mask.png").read_bytes()))
    hu = png_to_hu(np.stack(greys))
    hu.flags.writeable = False
    label_volume = np.stack(labels)
    label_volume.flags.writeable = False
    return hu, label_volume


def volume_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool volumes (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
