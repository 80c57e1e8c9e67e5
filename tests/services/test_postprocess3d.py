"""services.postprocess3d and the organ spec's postprocess_3d option."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from services.postprocess3d import postprocess_mask
from services.spec import OrganSpec, Postprocess3D, load_organ_spec


def blob_and_speck() -> np.ndarray:
    mask = np.zeros((12, 40, 40), bool)
    mask[2:10, 5:25, 5:25] = True  # the organ
    mask[4:6, 32:34, 32:34] = True  # a speck away from it
    return mask


def test_largest_component_keeps_the_organ_and_drops_the_speck():
    mask = blob_and_speck()
    out = postprocess_mask(mask, Postprocess3D(largest_component=True))
    assert out.dtype == bool and out.sum() == 8 * 20 * 20
    assert out[2:10, 5:25, 5:25].all() and not out[4:6, 32:34, 32:34].any()


def test_components_are_face_connected_in_3d():
    mask = blob_and_speck()
    mask[10:12, 5:7, 5:7] = True  # touches the organ's last slice face to face: part of it
    mask[10, 25, 25] = True  # touches the organ (at [9, 24, 24]) only at a corner: a component of its own
    out = postprocess_mask(mask, Postprocess3D(largest_component=True))
    assert out[10:12, 5:7, 5:7].all() and not out[10, 25, 25]


def test_holes_enclosed_in_a_slice_are_filled():
    mask = blob_and_speck()
    mask[3:9, 12:16, 12:16] = False  # a hole inside the organ in each of these slices
    mask[5, 5:25, 14] = False  # a cut open to the border of the organ in one slice: not a hole there
    out = postprocess_mask(mask, Postprocess3D(fill_holes=True))
    assert out[3:5, 12:16, 12:16].all() and out[6:9, 12:16, 12:16].all()
    np.testing.assert_array_equal(out[5], mask[5])
    assert out[4:6, 32:34, 32:34].all()  # filling keeps the speck


def test_both_options_and_an_empty_mask():
    mask = blob_and_speck()
    mask[3:9, 12:16, 12:16] = False
    out = postprocess_mask(mask, Postprocess3D(largest_component=True, fill_holes=True))
    assert out.sum() == 8 * 20 * 20
    empty = np.zeros((3, 20, 20), bool)
    assert not postprocess_mask(empty, Postprocess3D(largest_component=True, fill_holes=True)).any()


def test_disabled_options_leave_the_mask_unchanged_in_a_new_array():
    mask = blob_and_speck()
    mask[3:9, 12:16, 12:16] = False
    out = postprocess_mask(mask, Postprocess3D())
    np.testing.assert_array_equal(out, mask)
    out[0, 0, 0] = True
    assert not mask[0, 0, 0]


def reference(mask: np.ndarray, options: Postprocess3D) -> np.ndarray:
    """The options by their definitions, on the whole volume: scipy's labelling, and scipy's
    binary_fill_holes slice by slice."""
    out = mask.copy()
    if options.largest_component:
        labels, count = ndimage.label(out)
        if count > 1:
            out = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    if options.fill_holes:
        out = np.stack([ndimage.binary_fill_holes(plane) for plane in out])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_options_on_the_organ_box_give_what_they_give_on_the_whole_volume(seed):
    # random blobs: rings with holes, pieces touching the volume's edges, islands, holes that reach the edge
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((9, 48, 56)), 2.0)
    mask = (smooth > 0.51) & ~(smooth > 0.53)  # bands around the peaks: 13-26 pieces, 490-1120 hole voxels
    mask[rng.integers(0, 9), :, 0] |= rng.random(48) > 0.5  # the left edge of a slice
    for options in (
        Postprocess3D(largest_component=True),
        Postprocess3D(fill_holes=True),
        Postprocess3D(largest_component=True, fill_holes=True),
    ):
        np.testing.assert_array_equal(postprocess_mask(mask, options), reference(mask, options), str(options))


def test_a_2d_mask_is_refused():
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        postprocess_mask(np.zeros((20, 20), bool), Postprocess3D(largest_component=True))


def test_spec_option_round_trips_and_is_checked():
    raw = load_organ_spec("cells").to_dict()
    assert "postprocess_3d" not in raw  # organs without it keep their spec's shape
    spec = OrganSpec.from_dict({**raw, "postprocess_3d": {"largest_component": True}})
    assert spec.postprocess_3d == Postprocess3D(largest_component=True, fill_holes=False)
    assert OrganSpec.from_dict(spec.to_dict()) == spec
    for bad in ({"largest_component": "yes"}, {"largest": True}, ["largest_component"]):
        with pytest.raises(ValueError, match="postprocess_3d must map largest_component and/or fill_holes"):
            OrganSpec.from_dict({**raw, "postprocess_3d": bad})
