"""Several labels (issue 19): the one threshold rule (masks.labels_at), the organ server's softmax answer
split into what it needs, and resampling to a network's voxel size and back on the real hippocampus labels."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InvalidInput
from gateway.service.masks import (
    THRESHOLDS,
    areas,
    byte_cutoff,
    label_counts,
    labels_at,
    probability_mask,
    split_classes,
)
from gateway.service.volume3d import check_fits
from services import volumes
from services.spec import load_organ_spec
from tests import hippodata


def _bytes(*p: float) -> np.ndarray:
    return np.rint(np.asarray(p) * 255).astype(np.uint8)


def test_a_voxel_is_labelled_when_it_is_any_label_enough_and_takes_the_likeliest_label():
    # classes (background, anterior, posterior) for four voxels
    probs = np.stack(
        [_bytes(0.9, 0.4, 0.2, 0.45), _bytes(0.05, 0.3, 0.5, 0.15), _bytes(0.05, 0.3, 0.3, 0.4)]
    )[:, None, None, :]
    foreground, label = split_classes(probs)
    assert foreground.ravel().tolist() == [25, 153, 204, 140]
    assert label.ravel().tolist() == [1, 1, 1, 2]  # ties go to the first label
    maps = {t: labels_at(foreground, label, t).ravel().tolist() for t in THRESHOLDS}
    assert maps[0.2] == [0, 1, 1, 2]
    assert maps[0.5] == [0, 1, 1, 2]  # 40 % background, 30 % / 30 %: 60 % hippocampus, labelled
    assert maps[0.6] == [0, 1, 1, 0]
    assert maps[0.7] == maps[0.8] == [0, 0, 1, 0]


def test_one_label_is_the_binary_rule_unchanged():
    prob = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for t in THRESHOLDS:
        assert np.array_equal(labels_at(prob, None, t), probability_mask(prob, t).astype(np.uint8))
        assert np.count_nonzero(labels_at(prob, None, t)) == 256 - byte_cutoff(t)


def test_the_seven_label_maps_are_nested_with_the_same_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 20, 20, 20))
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    foreground, label = split_classes(np.rint(probs * 255).astype(np.uint8))
    maps = [labels_at(foreground, label, t) for t in THRESHOLDS]
    for low, high in zip(maps[:-1], maps[1:], strict=True):
        inside = high > 0
        assert np.array_equal(low[inside], high[inside]) and np.count_nonzero(low) >= np.count_nonzero(high)
    assert len({int(np.count_nonzero(m)) for m in maps}) == 7


@pytest.mark.skipif(not hippodata.HIPPO.is_dir(), reason="needs ../shared/data/hippocampus3d")
@pytest.mark.parametrize("mm", [0.8, 1.3])
def test_labels_resampled_to_another_voxel_size_and_back_keep_their_place(mm):
    _, labels = hippodata.case()
    shape = volumes.resampled_shape(labels.shape, (1.0, 1.0, 1.0), (mm, mm, mm))
    there = volumes.resample_zyx(labels, shape, order=0)
    back = volumes.resample_zyx(there, labels.shape, order=0)
    assert there.dtype == np.uint8 and back.shape == labels.shape
    for value in (1, 2):
        assert hippodata.dice(back, labels, value) >= 0.9
        # the same millilitres at either voxel size, within a few percent
        ml = np.count_nonzero(labels == value) / 1000
        assert np.count_nonzero(there == value) * mm**3 / 1000 == pytest.approx(ml, rel=0.05)


def test_the_same_spacing_is_no_resampling_at_all():
    data = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    assert volumes.resampled_shape(data.shape, (1.0005, 1.0, 1.0), (1.0, 1.0, 1.0)) == data.shape
    assert np.array_equal(volumes.resample_zyx(data, data.shape, order=1), data)


def _volume(shape, zooms=(1.0, 1.0, 1.0)) -> volumes.Volume:
    return volumes.Volume(np.zeros(shape, np.float32), np.diag([*zooms, 1.0]), "nifti")


@pytest.mark.parametrize("labels", [None, 1, 2, 3])
def test_the_counts_per_label_at_each_threshold_are_the_label_maps_counts(labels):
    rng = np.random.default_rng(labels or 0)
    fg = rng.integers(0, 256, (9, 31, 17), dtype=np.uint8)
    fg[0, 0, :3] = (byte_cutoff(0.5) - 1, byte_cutoff(0.5), 255)  # either side of a cutoff, and the top
    label = None if labels is None else rng.integers(1, labels + 1, fg.shape, dtype=np.uint8)
    n = labels or 1
    counts = label_counts(fg, label, n)
    assert list(counts) == [f"{t:.1f}" for t in THRESHOLDS]
    for t in THRESHOLDS:
        expected = np.bincount(labels_at(fg, label, t).ravel(), minlength=n + 1)[1:]
        assert counts[f"{t:.1f}"].tolist() == expected.tolist()
    if labels is None:
        assert areas(fg) == {t: int(c[0]) for t, c in counts.items()}


@pytest.mark.parametrize(
    ("shape", "zooms", "code"),
    [
        ((40, 50, 1), (1, 1, 1), "not_a_volume"),
        ((40, 50, 2), (1, 1, 0.4), "not_a_volume"),  # two slices 0.4 mm apart: one at 1 mm
        ((160, 192, 160), (1, 1, 1), "volume_too_large_for_organ"),
        ((40, 50, 40), (2, 2, 2), "volume_too_large_for_organ"),
    ],
)
def test_what_does_not_fit_the_network_is_refused_naming_it(shape, zooms, code):
    with pytest.raises(InvalidInput) as caught:
        check_fits(load_organ_spec("hippocampus"), _volume(shape, zooms))
    assert caught.value.code == code and "hippocampus" in caught.value.message


def test_a_crop_fits_at_its_own_voxel_size():
    spec = load_organ_spec("hippocampus")
    check_fits(spec, _volume((43, 58, 47)))  # the largest of the data set
    check_fits(spec, _volume((50, 70, 55), (0.8, 0.8, 0.8)))  # 40×56×44 at 1 mm
