"""The picker's thumbnail, GET /api/v1/pacs/studies/{study}/series/{series}/thumbnail.png, in process (the API
tests' world) against a real Orthanc: the middle instance by InstanceNumber fetched with WADO-RS and windowed
as the file says, no larger than asked; a series without an image (a SEG) is a 409 naming why, a series the
PACS does not hold a 404, the PACS down a 503 naming it. Who may call it: tests/api/test_access.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from common.launcher import free_port
from common.pacs import Pacs, PacsCredentials
from tests.pacsdata import ct_series

pytestmark = pytest.mark.integration


def _url(study_uid: str, series_uid: str, **query) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"/api/v1/pacs/studies/{study_uid}/series/{series_uid}/thumbnail.png" + (f"?{q}" if q else "")


@pytest.fixture(scope="module")
def series(world):
    """Five CT slices, each one flat grey value (slice k: -400 + 200 k HU), stored out of order."""
    slices = ct_series(5, size=64, patient_id="P-THUMB")
    for k, ds in enumerate(slices):
        ds.PixelData = np.full((64, 64), -400 + 200 * k, np.int16).tobytes()
        ds.WindowCenter, ds.WindowWidth = 0, 1000  # the file's own window: -500 … 500 HU
    pacs = world.app().state.clinic.pacs.pacs
    pacs.store(slices[::-1], slices[0].StudyInstanceUID)
    return slices


def test_the_middle_image_windowed_as_the_file_says(world, series):
    answer = world.client("doctor").get(
        _url(series[0].StudyInstanceUID, series[0].SeriesInstanceUID, size=48)
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert picture.shape == (48, 48)
    # the middle slice (InstanceNumber 3) is 0 HU: the middle of the window -500 … 500
    assert abs(int(picture.mean()) - 128) <= 2


def test_a_series_without_an_image_is_a_409(world, series):

    seg = ct_series(1, patient_id="P-THUMB", study_uid=series[0].StudyInstanceUID, modality="SEG")[0]
    del seg.PixelData  # a SEG-like instance: no pixel data a picture can be made of
    seg.SeriesInstanceUID = generate_uid()
    world.app().state.clinic.pacs.pacs.store([seg], series[0].StudyInstanceUID)
    answer = world.client("doctor").get(_url(series[0].StudyInstanceUID, seg.SeriesInstanceUID))
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "pacs_no_image"


def test_unknown_series_and_a_pacs_down(world, series):
    answer = world.client("doctor").get(_url(series[0].StudyInstanceUID, generate_uid()))
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "pacs_not_found")
    gateway = world.app().state.clinic.pacs
    configured = gateway.pacs
    gateway.pacs = Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", PacsCredentials("u", "p"))
    try:
        answer = world.client("doctor").get(_url(series[0].StudyInstanceUID, series[0].SeriesInstanceUID))
    finally:
        gateway.pacs = configured
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "pacs_unavailable")
    assert "PACS" in answer.json()["error"]["message"]
