"""A study's masks and volumes after the organ spec's 3-D post-processing (services.postprocess3d): what the
gateway serves (`StudyJobs._labels`, the mask at a threshold on the input grid) and records (`_voxel_counts`,
the mL at every threshold) is the post-processed mask, with the options worked on the canonical grid, whose
first axis is the axial one hole filling goes slice by slice along, whatever the input's voxel order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.service.masks import THRESHOLDS, byte_cutoff, label_counts
from gateway.service.studies import StudyJobs, _voxel_counts
from services import volumes
from services.postprocess3d import postprocess_mask
from services.spec import Postprocess3D, load_organ_spec

BOTH = Postprocess3D(largest_component=True, fill_holes=True)


def canonical_probabilities() -> np.ndarray:
    """uint8 (z, y, x): an organ at 0.78 with a vessel through it from top to bottom (a hole in each axial
    slice, open in 3-D and in every other plane), and a brighter island away from it."""
    prob = np.zeros((10, 32, 40), np.uint8)
    prob[1:9, 4:24, 4:24] = 200  # the organ
    prob[1:9, 10:14, 10:14] = 0  # the vessel
    prob[2:4, 28:30, 32:36] = 250  # an island
    return prob


def test_the_liver_spec_post_processes_its_study_masks():
    # measured on the volumes the cross-validation's fold models never saw (python -m tools.postprocess_eval
    # --cv …; services/liver/spec.yaml): both options on
    assert load_organ_spec("liver").postprocess_3d == BOTH


def test_volumes_count_the_post_processed_mask_at_every_threshold():
    prob = canonical_probabilities()
    counts = _voxel_counts(prob, None, 1, BOTH)
    organ = 8 * 20 * 20  # the holes filled, the island dropped
    for t in THRESHOLDS:
        expected = organ if byte_cutoff(t) <= 200 else 2 * 2 * 4  # above 0.78 only the island is left
        assert counts[f"{t:.1f}"].tolist() == [expected], t
    plain = label_counts(prob, None, 1)
    assert plain["0.5"].tolist() == [organ - 8 * 16 + 2 * 2 * 4]  # what no post-processing counts
    assert _voxel_counts(prob, None, 1, Postprocess3D())["0.5"].tolist() == plain["0.5"].tolist()


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 1.0, 2.5, 1.0]),  # i = x (to the left), j = y (to the front), k = z (up)
        # stored i = y (to the back), j = z (down), k = x (to the right): every axis moved and flipped, so
        # slices along the input's first axis are not axial (filling holes in them would leave the vessel)
        np.array([[0, 0, -1, 0], [-1, 0, 0, 0], [0, -2.5, 0, 0], [0, 0, 0, 1]], float),
    ],
    ids=["canonical", "permuted-and-flipped"],
)
def test_the_served_mask_is_post_processed_on_the_canonical_grid_and_lands_on_the_input_grid(affine):
    spec = dataclasses.replace(load_organ_spec("liver"), postprocess_3d=BOTH)
    canonical = canonical_probabilities()
    volume = volumes.Volume(data=np.zeros((1, 1, 1), np.float32), affine=affine, source="nifti")
    # the input grid holding this canonical volume: its shape first, then the probabilities carried onto it
    volume.data = np.zeros(_input_shape(affine, canonical.shape), np.float32)
    axcodes = ("L", "A", "S")
    prob_ijk = volume.from_canonical(canonical, axcodes)
    labels = StudyJobs._labels(spec, volume, prob_ijk, 0.5)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    expected = postprocess_mask(canonical >= byte_cutoff(0.5), BOTH)
    np.testing.assert_array_equal(labels, volume.from_canonical(expected.astype(np.uint8), axcodes))
    assert expected[1:9, 10:14, 10:14].all() and not expected[2:4, 28:30, 32:36].any()


def _input_shape(affine: np.ndarray, canonical_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (i, j, k) shape whose canonical (z, y, x) view has shape `canonical_zyx` under `affine`."""
    xyz = canonical_zyx[::-1]
    world_axis = np.abs(affine[:3, :3]).argmax(axis=0)  # the world axis (x, y, z) each voxel axis runs along
    return tuple(int(xyz[a]) for a in world_axis)


def test_an_organ_of_two_labels_counts_each_within_the_post_processed_mask():
    prob = canonical_probabilities()
    label = np.ones(prob.shape, np.uint8)
    label[:, :, 14:] = 2  # the organ's right part, and the island, are label 2
    counts = _voxel_counts(prob, label, 2, BOTH)
    left, right = 8 * 20 * 10, 8 * 20 * 10  # the organ (x 4–23) split at x = 14, its vessel filled
    assert counts["0.5"].tolist() == [left, right]
    assert counts["0.8"].tolist() == [0, 2 * 2 * 4]
