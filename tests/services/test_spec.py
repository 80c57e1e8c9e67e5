"""Organ specs: the inference modes a spec may name, and what each needs."""

import re

import pytest

from services.spec import (
    DEFAULT_VOLUME_BATCH,
    DEFAULT_VOLUME_CHUNK,
    MAX_VOLUME_CHUNK,
    OrganSpec,
    load_organ_spec,
)


def test_a_spec_round_trips_through_its_dict():
    for organ in ("liver", "cells"):
        spec = load_organ_spec(organ)
        assert OrganSpec.from_dict(spec.to_dict()) == spec


def test_sliding_window_needs_a_window_size_and_an_overlap_below_one():
    cells = load_organ_spec("cells")
    sliding = cells.with_inference("sliding", 256, 0.5)
    assert sliding.inference.mode == "sliding"
    assert sliding.inference.size == (256, 256) and sliding.inference.overlap == 0.5
    assert sliding.mean == cells.mean and sliding.name == "cells"
    with pytest.raises(ValueError, match="'sliding' needs inference.size"):
        cells.with_inference("sliding")
    with pytest.raises(ValueError, match="overlap must be in"):
        cells.with_inference("sliding", 256, 1.0)


def test_an_unknown_mode_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="must be one of resize, whole, sliding, pad, not 'tiles'"):
        load_organ_spec("cells").with_inference("tiles", 256)


def test_test_time_mirror_images_are_named_and_checked():
    cells = load_organ_spec("cells")
    flips = cells.with_inference("whole", tta="flips")
    assert flips.inference.tta == "flips" and flips.single_pass().inference.tta == "none"
    assert flips.single_pass().inference.mode == "whole"
    half = cells.with_inference("whole", tta="rot180")
    assert half.inference.tta == "rot180" and half.single_pass().inference.tta == "none"
    with pytest.raises(ValueError, match="inference.tta must be one of none, flips, rot180, not 'rot90'"):
        cells.with_inference("whole", tta="rot90")


def test_an_organ_may_set_its_own_gateway_deadline():
    cells, liver = load_organ_spec("cells"), load_organ_spec("liver")
    assert cells.inference_deadline_s == 30.0 and liver.inference_deadline_s is None
    assert "inference_deadline_s" not in liver.to_dict()  # specs without one keep their shape
    assert OrganSpec.from_dict(cells.to_dict()).inference_deadline_s == 30.0
    for bad in (0, -5, "30s", True):
        with pytest.raises(ValueError, match="inference_deadline_s must be a positive number of seconds"):
            OrganSpec.from_dict({**cells.to_dict(), "inference_deadline_s": bad})


def test_volume_chunk_and_mini_batch_are_slice_counts_up_to_the_handlers_cap():
    cells = load_organ_spec("cells").to_dict()
    inference = {k: v for k, v in cells["inference"].items() if not k.startswith("volume_")}
    defaults = OrganSpec.from_dict({**cells, "inference": inference}).inference
    assert (defaults.volume_chunk, defaults.volume_batch) == (DEFAULT_VOLUME_CHUNK, DEFAULT_VOLUME_BATCH)
    given = OrganSpec.from_dict({**cells, "inference": {**inference, "volume_chunk": 64, "volume_batch": 2}})
    assert (given.inference.volume_chunk, given.inference.volume_batch) == (64, 2)
    for key in ("volume_chunk", "volume_batch"):
        for bad in (0, MAX_VOLUME_CHUNK + 1, "8", 4.0, True):
            with pytest.raises(
                ValueError, match=f"inference.{key} must be a whole number of slices from 1 to 64"
            ):
                OrganSpec.from_dict({**cells, "inference": {**inference, key: bad}})


def test_a_3d_organ_names_its_labels_size_spacing_and_normalisation():
    spec = load_organ_spec("hippocampus")
    assert spec.volumetric and spec.labels == ("anterior", "posterior") and spec.label == "hippocampus"
    assert spec.inference.mode == "pad" and spec.inference.size == (48, 64, 48)
    assert spec.inference.spacing_mm == (1.0, 1.0, 1.0) and spec.per_volume == "zscore"
    assert OrganSpec.from_dict(spec.to_dict()) == spec
    liver = load_organ_spec("liver")
    assert not liver.volumetric and liver.labels == ("liver",)
    assert not {"dimensions", "labels"} & set(liver.to_dict())  # 2-D one-label specs keep their shape
    assert (
        "spacing_mm" not in liver.to_dict()["inference"] and "per_volume" not in liver.to_dict()["normalize"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dimensions": 4}, "dimensions must be 2 or 3"),
        ({"labels": ["a", "a"]}, "labels must be a list of distinct names"),
        ({"labels": "anterior"}, "labels must be a list of distinct names"),
        (
            {"inference": {"mode": "resize", "size": [48, 64, 48], "spacing_mm": [1, 1, 1]}},
            "must be one of pad",
        ),
        ({"inference": {"mode": "pad", "size": [48, 64], "spacing_mm": [1, 1, 1]}}, "multiples of 8"),
        ({"inference": {"mode": "pad", "size": [48, 60, 48], "spacing_mm": [1, 1, 1]}}, "multiples of 8"),
        ({"inference": {"mode": "pad", "size": [48, 64, 48]}}, "needs inference.spacing_mm"),
        ({"inference": {"mode": "pad", "size": [48, 64, 48], "spacing_mm": [1, 0, 1]}}, "spacing_mm"),
        ({"normalize": {"mean": [0.0], "std": [1.0]}}, "needs normalize.per_volume"),
        ({"normalize": {"per_volume": "minmax"}}, "not 'minmax'"),
    ],
)
def test_a_broken_3d_spec_names_the_field(change, message):
    raw = {**load_organ_spec("hippocampus").to_dict(), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        OrganSpec.from_dict(raw)


def test_volume_fields_are_refused_on_a_2d_organ():
    liver = load_organ_spec("liver").to_dict()
    for raw in (
        {**liver, "inference": {**liver["inference"], "spacing_mm": [1, 1, 1]}},
        {**liver, "normalize": {**liver["normalize"], "per_volume": "zscore"}},
        {**liver, "inference": {**liver["inference"], "mode": "pad"}},
    ):
        with pytest.raises(ValueError, match="are for 3-D organs"):
            OrganSpec.from_dict(raw)


def test_an_organ_carries_its_own_words_for_other_languages():
    spec = load_organ_spec("hippocampus")
    assert spec.translations["zh"]["labels"]["anterior"] and spec.translations["zh"]["display_name"]
    raw = spec.to_dict()
    for bad in ({"zh": {"labels": {"middle": "中"}}}, {"zh": "海马体"}, {"zh": {"display": "x"}}, ["zh"]):
        with pytest.raises(ValueError, match="translations"):
            OrganSpec.from_dict({**raw, "translations": bad})
    assert "translations" not in load_organ_spec("liver").to_dict()
