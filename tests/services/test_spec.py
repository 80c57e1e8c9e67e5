"""Organ specs: the inference modes a spec may name, and what each needs."""

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
    with pytest.raises(ValueError, match="must be one of resize, whole, sliding, not 'tiles'"):
        load_organ_spec("cells").with_inference("tiles", 256)


def test_test_time_mirror_images_are_named_and_checked():
    cells = load_organ_spec("cells")
    flips = cells.with_inference("whole", tta="flips")
    assert flips.inference.tta == "flips" and flips.single_pass().inference.tta == "none"
    assert flips.single_pass().inference.mode == "whole"
    with pytest.raises(ValueError, match="inference.tta must be one of none, flips, not 'rot90'"):
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
