"""Organ specs: the inference modes a spec may name, and what each needs."""

import pytest

from services.spec import OrganSpec, load_organ_spec


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
