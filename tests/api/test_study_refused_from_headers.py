"""A 3-D organ takes a crop around the organ (services/hippocampus/spec.yaml inference.size): a DICOM series
far larger than that is refused from its headers, 400 `volume_too_large_for_organ`, before a pixel is
decoded (the check used to come after `read_study` had decoded the whole series); one that fits is read."""

from __future__ import annotations

import numpy as np
import pytest

from services import volumes
from tests import hippodata


def _mr_series(shape_ijk: tuple[int, int, int]) -> list[tuple[str, bytes]]:
    name = f"mr-{'x'.join(map(str, shape_ijk))}"
    return hippodata.mr_series_of(np.zeros(shape_ijk, np.int16), name=name, patient_id="HIPPO-BIG")


def _submit(world, files):
    return world.client("doctor").post(
        "/api/v1/studies", data={"organ": "hippocampus"}, files=[("files", f) for f in files]
    )


@pytest.fixture
def pixels_read(monkeypatch) -> list[int]:
    """Counts the calls that decode a study's pixels (services.volumes.read_study)."""
    calls, read = [], volumes.read_study

    def counted(*args, **kwargs):
        calls.append(1)
        return read(*args, **kwargs)

    monkeypatch.setattr(volumes, "read_study", counted)
    return calls


def test_a_series_far_larger_than_the_organs_crop_is_refused_before_a_pixel_is_read(world, pixels_read):
    answer = _submit(world, _mr_series((160, 192, 24)))  # a whole head, 1 mm: the crop is 48×64×48
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "volume_too_large_for_organ" and "hippocampus" in error["message"]
    assert pixels_read == []


def test_a_series_that_fits_is_read_and_queued(world, pixels_read):
    answer = _submit(world, _mr_series((40, 50, 12)))
    assert answer.status_code == 202, answer.text
    assert pixels_read == [1]
