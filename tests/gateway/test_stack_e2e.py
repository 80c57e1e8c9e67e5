"""End to end on real parts: SeaweedFS, one TorchServe per organ (untrained models), SQLite, and the
gateway's production DataPlane, over HTTP (FastAPI app) and gRPC (medseg.v1 server on a free port)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from medseg.v1 import segmentation_pb2 as pb
from PIL import Image
from sqlalchemy import func, select

from gateway.models import Segmentation
from gateway.service import DataPlane
from tests.data import LIVER_TRAIN
from tests.fixtures.stack import bearer
from tests.gateway.contract import THRESHOLDS, assert_contract

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIVER_DIR = str(LIVER_TRAIN)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def liver_slice(name: str = "000.png") -> bytes:
    with open(f"{LIVER_DIR}/{name}", "rb") as fh:
        return fh.read()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header announcing a huge image, with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 64)  # a few rows; the header alone must be refused
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def dicom_ct(width: int = 64, height: int = 48) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.PixelSpacing = 1, -1024, [0.7, 0.7]
    ds.PixelData = (np.random.default_rng(0).integers(0, 2000, (height, width)).astype(np.int16)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(stack_dataplane, stack_settings, http_client_for):
    return http_client_for(stack_dataplane, stack_settings)


@pytest.fixture(scope="module")
def stub(stack_dataplane, stack_settings, grpc_stub_for):
    return grpc_stub_for(stack_dataplane, max_message_bytes=stack_settings.grpc_max_message_bytes)


def segment(http, api_keys, data: bytes, name: str = "x.png", organ: str = "liver", **fields):
    return http.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": organ, **fields},
        files={"file": (name, data)},
    )


def test_ready(http):
    response = http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["components"] == {
        "organ:liver": "ok",
        "organ:cells": "ok",
        "organ:hippocampus": "ok",
        "objectstore": "ok",
        "disk": "ok",
    }


def test_segment_liver_slice_over_http(http, api_keys, stack_dataplane, objectstore, gateway_engine):
    response = segment(http, api_keys, liver_slice(), "000.png", patient_id="LITS-000")
    assert response.status_code == 200, response.text
    body = response.json()
    assert_contract(body, 512, 512)
    assert body["model"] == {"name": "liver", "version": "1"} and body["default_threshold"] == 0.5
    with gateway_engine.connect() as conn:
        row = conn.execute(
            select(Segmentation).where(Segmentation.id == __import__("uuid").UUID(body["id"]))
        ).one()
    assert row.patient_id == "LITS-000" and (row.width, row.height) == (512, 512)
    stored = objectstore.get_bytes(stack_dataplane.results_bucket, row.probability_key)
    assert stored == base64.b64decode(body["probability_png"])
    # the probability map is the segmentation's one object; masks and thumbnail are made from it
    assert (row.mask_keys, row.thumbnail_key) == ({}, None)
    assert set(row.areas_px) == {f"{t:.1f}" for t in THRESHOLDS}
    prefix = row.probability_key.rsplit("/", 1)[0] + "/"
    assert [o.key for o in objectstore.list(stack_dataplane.results_bucket, prefix)] == [row.probability_key]
    answered = {m["threshold"]: base64.b64decode(m["mask_png"]) for m in body["masks"]}
    for threshold, params in [(0.3, {"threshold": 0.3}), (0.5, {})]:  # no threshold: the organ's default
        got = http.get(
            f"/api/v1/segmentations/{body['id']}/mask.png", params=params, headers=bearer(api_keys["segment"])
        )
        assert got.status_code == 200 and got.headers["x-medseg-threshold"] == f"{threshold:.1f}"
        assert got.content == answered[threshold]  # made from the stored map: what the answer carried


def test_segment_liver_slice_over_grpc(stub, api_keys):
    response = stub.Segment(
        pb.SegmentRequest(organ="liver", image=liver_slice("001.png"), filename="001.png"),
        metadata=(("authorization", f"Bearer {api_keys['segment']}"),),
        timeout=120,
    )
    assert (response.width, response.height) == (512, 512) and len(response.masks) == 7
    for m in response.masks:
        assert Image.open(io.BytesIO(m.mask_png)).size == (512, 512)
    organs = stub.ListOrgans(
        pb.ListOrgansRequest(), metadata=(("authorization", f"Bearer {api_keys['both']}"),)
    )
    assert {o.name: (o.ready, o.model.version) for o in organs.organs} == {
        "liver": (True, "1"),
        "cells": (True, "1"),
        "hippocampus": (True, "1"),
    }


def test_cells_rgb_tile(http, api_keys):
    tile = Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 120, 3), dtype=np.uint8))
    response = segment(http, api_keys, encode(tile), "tile.png", organ="cells")
    assert response.status_code == 200, response.text
    assert_contract(response.json(), 120, 100)


def _grey(w, h, mode="L"):
    return Image.fromarray(np.random.default_rng(2).integers(0, 255, (h, w), dtype=np.uint8)).convert(mode)


GOOD = {
    "jpeg named .png": lambda: (encode(_grey(64, 48).convert("RGB"), "JPEG"), "x.png", 64, 48),
    "16-bit grey png": lambda: (
        encode(Image.fromarray((np.arange(64 * 40).reshape(40, 64) * 25).astype(np.uint16))),
        "x.png",
        64,
        40,
    ),
    "1-bit png": lambda: (encode(_grey(40, 40).convert("1")), "x.png", 40, 40),
    "rgba png": lambda: (encode(_grey(50, 30).convert("RGBA")), "x.png", 50, 30),
    "grey+alpha png": lambda: (encode(_grey(30, 50).convert("LA")), "x.png", 30, 50),
    "palette png": lambda: (encode(_grey(33, 17).convert("P")), "x.png", 33, 17),
    "16-bit tiff": lambda: (
        encode(Image.fromarray(np.full((20, 70), 3000, np.uint16)), "TIFF"),
        "x.tif",
        70,
        20,
    ),
    "dicom ct": lambda: (dicom_ct(64, 48), "x.dcm", 64, 48),
    "odd size": lambda: (encode(_grey(17, 999)), "x.png", 17, 999),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_unusual_but_valid_images_segment(http, api_keys, case):
    data, name, width, height = GOOD[case]()
    response = segment(http, api_keys, data, name)
    assert response.status_code == 200, response.text
    assert_contract(response.json(), width, height)


BAD = {
    "corrupt": lambda: (b"\x89PNG\r\n\x1a\n" + b"garbage" * 100, 400),
    "truncated": lambda: (liver_slice()[:5000], 400),  # its header reads: the organ server refuses it
    "not an image": lambda: (b"%PDF-1.4 hello", 400),
    "empty": lambda: (b"", 400),
    "decompression bomb": lambda: (png_bomb(), 400),
    "tiny": lambda: (encode(_grey(8, 8)), 400),
    "huge": lambda: (encode(Image.new("L", (8000, 6000))), 400),
    "oversized upload": lambda: (b"\x89PNG\r\n\x1a\n" + b"\0" * (33 * 1024 * 1024), 413),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_are_4xx_and_stack_stays_ready(http, api_keys, case):
    data, status = BAD[case]()
    name = f"{case.replace(' ', '-')}.png"
    response = segment(http, api_keys, data, name=name)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if status == 400 and case != "empty":  # the image refused, by the header check or by the organ server
        assert error["code"] == "invalid_image" and error["message"].startswith(f"{name}: ")
    assert http.get("/readyz").status_code == 200


def test_evaluate_real_labels(http, api_keys):
    files = []
    for name in ("000", "001"):
        files += [
            ("images", (f"{name}.png", liver_slice(f"{name}.png"))),
            ("labels", (f"{name}_mask.png", liver_slice(f"{name}_mask.png"))),
        ]
    response = http.post(
        "/api/v1/evaluate", headers=bearer(api_keys["evaluate"]), data={"organ": "liver"}, files=files
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(i["filename"] for i in body["images"]) == ["000.png", "001.png"]
    assert all(0.0 <= i["dice"] <= 1.0 and i["label_px"] > 0 for i in body["images"])
    assert [t["threshold"] for t in body["per_threshold"]] == THRESHOLDS


def test_object_store_down_is_503_without_dangling_rows(http, api_keys, gateway_engine, objectstore_down):
    with gateway_engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(Segmentation)).scalar_one()
    response = segment(http, api_keys, liver_slice())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "objectstore_unavailable"
    with gateway_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Segmentation)).scalar_one() == before
    ready = http.get("/readyz")
    assert ready.status_code == 503 and "objectstore" in ready.json()["error"]["message"]
    assert "organ:liver" not in ready.json()["error"]["message"]


def test_recovers_after_object_store_restart(http, api_keys):
    assert http.get("/readyz").status_code == 200
    assert segment(http, api_keys, liver_slice()).status_code == 200


def test_one_organ_server_down_other_answers(stack_settings, objectstore, http_client_for, api_keys):
    """cells' server is gone (nothing listens on its address): 503 for cells, fast; liver still answers."""
    import socket
    import time

    from gateway.service import build_dataplane

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        settings = stack_settings.model_copy(
            update={
                "organ_addresses": {
                    **stack_settings.organ_addresses,
                    "cells": f"127.0.0.1:{dead.getsockname()[1]}",
                }
            }
        )
        dataplane: DataPlane = build_dataplane(settings)
        try:
            http = http_client_for(dataplane, settings)
            started = time.monotonic()
            tile = encode(Image.new("RGB", (64, 64)))
            down = segment(http, api_keys, tile, organ="cells")
            assert down.status_code == 503 and "cells" in down.json()["error"]["message"]
            assert time.monotonic() - started < 5.0
            assert segment(http, api_keys, liver_slice()).status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["components"] == {
                "organ:liver": "ok",
                "organ:cells": "unavailable",
                "organ:hippocampus": "ok",
                "objectstore": "ok",
                "disk": "ok",
            }
        finally:
            dataplane.close()


def test_grpc_bad_input_codes(stub, api_keys):
    meta = (("authorization", f"Bearer {api_keys['segment']}"),)
    for image, code in (
        (liver_slice()[:3000], grpc.StatusCode.INVALID_ARGUMENT),
        (png_bomb(), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.Segment(pb.SegmentRequest(organ="liver", image=image), metadata=meta, timeout=60)
        assert info.value.code() == code


def test_each_organ_call_has_its_organs_deadline(stack_settings, monkeypatch):
    """A cells tile is four full-resolution passes: its calls get their own, longer deadline, set in its
    organ folder (services/cells/spec.yaml) and overridable from the environment."""
    from common.settings import Settings
    from gateway.service import build_dataplane
    from services.spec import load_organ_spec

    assert load_organ_spec("cells").inference_deadline_s == 30.0
    assert load_organ_spec("liver").inference_deadline_s is None
    assert Settings.model_fields["organ_inference_timeouts_s"].default == {}

    def timeouts(organ_timeouts: dict) -> dict[str, float]:
        """The cells and liver clients' timeouts of a data plane built with a 10 s default and these."""
        update = {"inference_timeout_s": 10.0, "organ_inference_timeouts_s": organ_timeouts}
        dataplane = build_dataplane(stack_settings.model_copy(update=update))
        try:
            return {organ: dataplane.clients[organ].timeout for organ in ("cells", "liver")}
        finally:
            dataplane.close()

    assert timeouts({}) == {"cells": 30.0, "liver": 10.0}
    monkeypatch.setenv("MEDSEG_ORGAN_INFERENCE_TIMEOUTS_S", '{"cells": 45}')
    from_env = Settings().organ_inference_timeouts_s
    assert from_env == {"cells": 45.0}
    assert timeouts(from_env) == {"cells": 45.0, "liver": 10.0}
