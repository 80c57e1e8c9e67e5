"""What the viewer reads over HTTP: the image a result was made from (kept with it, gateway/service/views.py),
a CT's Hounsfield values for window/level with its directions, the nuclei of a histology result, and HD95 in
millimetres where the image carried its pixel spacing. Organ servers are fakes answering a fixed map."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from gateway import crud
from gateway.models import ModelVersion, Segmentation
from services.imaging import decode_image
from tests.api.conftest import png
from tests.services.test_imaging import dicom_bytes
from tests.studydata import ct_slice_bytes

H, W = 40, 48
SQUARE = (slice(10, 30), slice(12, 36))


def square_map(h, w):
    out = np.zeros((h, w), np.uint8)
    out[SQUARE] = 250
    return out


def two_touching_nuclei(h, w):
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - 20) ** 2 + (xx - 16) ** 2 <= 10**2) | ((yy - 20) ** 2 + (xx - 33) ** 2 <= 10**2)
    return (inside * 255).astype(np.uint8)


class FixedOrgan:
    """An organ server answering `answer(h, w)` for any upload the gateway accepts (DICOM too)."""

    def __init__(self, answer):
        self.answer = answer

    def predict(self, model_name, data, version=None, timeout=None):
        height, width = decode_image(data).array.shape[:2]
        return png(self.answer(height, width))

    def health(self, timeout=1.0):
        return True, "ok"

    def close(self):
        pass


@pytest.fixture(scope="module")
def viewer(world):
    app = world.app()
    app.state.dataplane.clients.update(liver=FixedOrgan(square_map), cells=FixedOrgan(two_touching_nuclei))
    app.state.dataplane.record_segmentation = crud.record_segmentation
    with world.session() as session:
        session.add(ModelVersion(organ="liver", model_name="liver", version="1", state="default",
                                 default_threshold=0.5, created_by="test"))  # fmt: skip
    app.state.clinic.directory.invalidate()
    return world


def _segment(client, organ: str, name: str, data: bytes, keep_image: bool = True) -> str:
    form = {"organ": organ, "keep_image": str(keep_image).lower()}
    r = client.post("/api/v1/segment", data=form, files={"file": (name, data)})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _ct() -> np.ndarray:
    hu = np.full((H, W), -1000.0)
    hu[SQUARE] = 60.0  # liver-like
    hu[0:5, 0:5] = 1200.0  # bone, outside the liver window
    return hu


def test_a_ct_result_keeps_its_image_and_hounsfield_values_with_its_directions(viewer):
    doctor = viewer.client("doctor")
    seg = _segment(doctor, "liver", "slice.dcm", ct_slice_bytes(_ct()))
    image = doctor.get(f"/api/v1/segmentations/{seg}/image.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    # drawn with the liver's window (C60 W400): -1000 HU black, 60 HU mid-grey, 1200 HU white
    pixels = np.asarray(Image.open(io.BytesIO(image.content)))
    assert pixels.shape == (H, W) and (pixels[0, 0], pixels[20, 20], pixels[39, 47]) == (255, 128, 0)
    assert image.headers["x-medseg-values"] == "HU" and image.headers["x-medseg-window"] == "60 400"
    assert image.headers["x-medseg-orientation"] == "L P" and image.headers["x-medseg-invert"] == "0"
    values = doctor.get(f"/api/v1/segmentations/{seg}/values.npy")
    assert values.status_code == 200
    hu = np.load(io.BytesIO(values.content), allow_pickle=False)
    assert hu.dtype == np.int16 and np.array_equal(hu, _ct())
    (item,) = [s for s in doctor.get("/api/v1/segmentations").json()["segmentations"] if s["id"] == seg]
    assert item["image_url"] == f"/api/v1/segmentations/{seg}/image.png"


def test_a_png_result_keeps_its_image_but_has_no_values_to_window(viewer):
    doctor = viewer.client("doctor")
    grey = np.tile(np.arange(W, dtype=np.uint8) * 5, (H, 1))
    seg = _segment(doctor, "liver", "slice.png", png(grey))
    image = doctor.get(f"/api/v1/segmentations/{seg}/image.png")
    assert image.status_code == 200 and "x-medseg-values" not in image.headers
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.content))), grey)
    values = doctor.get(f"/api/v1/segmentations/{seg}/values.npy")
    assert values.status_code == 404 and values.json()["error"]["code"] == "no_values"


@pytest.mark.parametrize("kept", ["not asked", "made before"])
def test_a_result_without_its_image_says_so(viewer, kept):
    doctor = viewer.client("doctor")
    seg = _segment(doctor, "liver", "slice.png", png(np.full((H, W), 90, np.uint8)), kept == "made before")
    if kept == "made before":
        with viewer.session() as session:
            session.get(Segmentation, uuid.UUID(seg)).view_key = None  # as rows made before 0008
    r = doctor.get(f"/api/v1/segmentations/{seg}/image.png")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_image"
    (item,) = [s for s in doctor.get("/api/v1/segmentations").json()["segmentations"] if s["id"] == seg]
    assert item["image_url"] is None


def test_nuclei_of_a_histology_result_touching_ones_split(viewer):
    doctor = viewer.client("doctor")
    tile = np.full((H, W, 3), 200, np.uint8)
    seg = _segment(doctor, "cells", "tile.png", png(tile))
    r = doctor.get(f"/api/v1/segmentations/{seg}/nuclei", params={"threshold": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["count"], body["threshold"], body["areas_um2"]) == (2, 0.5, None)
    assert sum(body["areas_px"]) == int((two_touching_nuclei(H, W) > 0).sum())
    assert doctor.get(f"/api/v1/segmentations/{seg}/nuclei").json()["threshold"] == 0.5  # the organ's default
    bad = doctor.get(f"/api/v1/segmentations/{seg}/nuclei", params={"threshold": 0.55})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_threshold"
    missing = doctor.get(f"/api/v1/segmentations/{uuid.uuid4()}/nuclei")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_segmentation"


def test_nuclei_areas_in_square_micrometres_when_the_image_carries_its_spacing(viewer):
    doctor = viewer.client("doctor")
    stored = np.full((H, W), 1000, np.uint16)
    seg = _segment(doctor, "cells", "tile.dcm", dicom_bytes(stored, spacing=(0.00025, 0.0005)))
    body = doctor.get(f"/api/v1/segmentations/{seg}/nuclei").json()
    assert body["count"] == 2
    assert body["areas_um2"] == pytest.approx([a * 0.25 * 0.5 for a in body["areas_px"]])


def test_hd95_in_millimetres_when_the_image_carries_its_spacing(viewer):
    doctor = viewer.client("doctor")
    label = np.zeros((H, W), np.uint8)
    label[12:30, 12:36] = 255  # two rows short of the prediction at the top: HD95 2 px
    stored = np.full((H, W), 1000, np.uint16)
    files = [
        ("images", ("a.dcm", dicom_bytes(stored, spacing=(0.5, 0.8)))), ("labels", ("a.png", png(label))),
        ("images", ("b.png", png(np.full((H, W), 90, np.uint8)))), ("labels", ("b.png", png(label))),
    ]  # fmt: skip
    r = doctor.post("/api/v1/evaluations", data={"organ": "liver"}, files=files)
    assert r.status_code == 201, r.text
    cases = {c["name"]: c for c in r.json()["cases"]}
    assert cases["a"]["hd95"] == pytest.approx(2.0) and cases["a"]["hd95_mm"] == pytest.approx(1.0)
    assert (cases["a"]["pixel_spacing_row_mm"], cases["a"]["pixel_spacing_col_mm"]) == (0.5, 0.8)
    assert cases["b"]["hd95"] == pytest.approx(2.0) and cases["b"]["hd95_mm"] is None  # a PNG: px only
