"""Counting nuclei in a mask (gateway/service/nuclei.py): touching nuclei are split, stray pixels are not
nuclei, and on a real MoNuSeg mask the count is of the order the annotation has."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gateway.service.nuclei import MIN_AREA_PX, count_nuclei, split_nuclei
from tests.data import CELLS_TRAIN
from tests.shapes import discs


def test_two_touching_discs_are_two_nuclei():
    mask = discs((80, 120), [(40, 40), (40, 72)], 18)  # centres 32 px apart, radii 18: they overlap
    assert ndimage.label(mask)[1] == 1  # one blob to connected components
    found = count_nuclei(mask)
    assert found.count == 2
    assert sum(found.areas_px) == mask.sum()  # every pixel of the blob belongs to one of them
    assert abs(found.areas_px[0] - found.areas_px[1]) <= 0.05 * mask.sum()  # split down the middle


def test_a_chain_of_touching_discs_and_a_lone_one():
    mask = discs((100, 200), [(40, 30), (40, 58), (40, 86), (80, 170)], 15)
    assert ndimage.label(mask)[1] == 2
    assert count_nuclei(mask).count == 4


@pytest.mark.parametrize("radius", [6, 12, 30])
def test_one_round_nucleus_is_one_whatever_its_size(radius):
    assert count_nuclei(discs((80, 80), [(40, 40)], radius)).count == 1


def test_stray_pixels_and_an_empty_mask_are_no_nuclei():
    assert count_nuclei(np.zeros((40, 40), bool)).count == 0
    specks = np.zeros((40, 40), bool)
    specks[5, 5] = True
    specks[20:22, 30:32] = True
    assert specks.sum() < MIN_AREA_PX and count_nuclei(specks).count == 0


def test_labels_stay_inside_the_mask():
    mask = discs((64, 64), [(30, 24), (30, 44)], 12)
    labels = split_nuclei(mask)
    assert set(np.unique(labels[~mask])) == {0} and (labels[mask] > 0).all()


def test_a_monuseg_mask_is_split_into_about_as_many_nuclei_as_are_annotated():
    """TCGA-18-5592 (1000² at 40×): its binary mask has 307 connected blobs, many of them several touching
    nuclei. Split, there are more, each of a nucleus's size at 40× (about 5-15 µm across at 0.25 µm/px)."""
    path = CELLS_TRAIN / "masks" / "TCGA-18-5592-01Z-00-DX1.png"
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared MoNuSeg data (../shared/data/README.md)")
    mask = np.asarray(Image.open(path).convert("L")) > 127
    blobs = ndimage.label(mask)[1]
    found = count_nuclei(mask)
    assert blobs == 307
    assert 1.5 * blobs < found.count < 3 * blobs  # touching nuclei split; not shattered into fragments
    median = float(np.median(found.areas_px))
    assert 150 < median < 1500, median  # px: discs 14-44 px across
    assert sum(found.areas_px) >= 0.99 * mask.sum()  # only rim fragments are left out


def ellipse(shape, centre, axes, angle_deg=0.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    a = np.deg2rad(angle_deg)
    dy, dx = yy - centre[0], xx - centre[1]
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    return (u / axes[1]) ** 2 + (v / axes[0]) ** 2 <= 1


@pytest.mark.parametrize("angle", [0, 30, 90])
def test_one_elongated_nucleus_is_one_at_any_angle(angle):
    """An ellipse twice as long as wide (a spindle-shaped nucleus, 12 × 24 px radii) has a ridge of equal
    distances along its long axis, not two peaks: it stays one nucleus."""
    mask = ellipse((90, 90), (45, 45), (12, 24), angle)
    assert count_nuclei(mask).count == 1


def test_two_touching_ellipses_are_two():
    mask = ellipse((90, 140), (45, 45), (14, 22)) | ellipse((90, 140), (45, 87), (14, 22))
    assert ndimage.label(mask)[1] == 1
    assert count_nuclei(mask).count == 2
