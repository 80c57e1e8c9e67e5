"""3-D post-processing of a binary mask volume, as the organ spec's `postprocess_3d` asks.

    mask = postprocess_mask(probs_u8 >= cutoff, spec.postprocess_3d)   # bool (z, y, x)

A 2-D network segments a volume slice by slice, so its mask can hold what no organ has: islands away
from the organ (a bright spleen or kidney in one slice) and holes inside it (a vessel the model doubted).
The options act on the thresholded mask at any threshold (the gateway derives masks on request from the
stored probability volume):

* `largest_component`: keep only the largest connected component in 3-D (face connectivity, scipy's
  default structure, as nnU-Net's post-processing), for organs that are one piece;
* `fill_holes`: fill the holes enclosed within each axial slice (a slice's background not connected to
  its border). A cavity is rarely closed in all three dimensions (vessels leave the organ), so slice by
  slice fills what a 3-D fill would leave open.

Whether an organ gets them is measured (python -m tools.postprocess_eval): volume Dice with and without.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from services.spec import Postprocess3D


def postprocess_mask(mask_zyx: np.ndarray, options: Postprocess3D) -> np.ndarray:
    """The mask after the enabled options (largest component first, then hole filling); a new bool array.
    Disabled options leave it as it is."""
    mask = np.asarray(mask_zyx)
    if mask.ndim != 3:
        raise ValueError(f"expected a (z, y, x) mask volume, got shape {mask.shape}")
    mask = mask.astype(bool, copy=True)
    if options.largest_component:
        mask = largest_component(mask)
    if options.fill_holes:
        mask = fill_holes_per_slice(mask)
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Only the largest face-connected component of a bool volume (an empty one stays empty)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(sizes.argmax())


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Each axial slice (first axis) with its enclosed holes filled."""
    out = np.empty_like(mask, dtype=bool)
    for z, plane in enumerate(mask):
        out[z] = ndimage.binary_fill_holes(plane) if plane.any() else plane
    return out
