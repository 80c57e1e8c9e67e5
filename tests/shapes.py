"""Synthetic masks for tests of the nucleus counter and its measurement."""

from __future__ import annotations

import numpy as np


def discs(shape, centres, radius) -> np.ndarray:
    """A boolean mask of `shape` holding a disc of `radius` at each (y, x) centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask
