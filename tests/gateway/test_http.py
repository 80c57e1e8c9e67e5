"""The HTTP edge over a DataPlane with fake organ servers and store; real app, database and API keys.
Every answer, including FastAPI's and Starlette's own errors, is {"error": {"code", "message"}}."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from common.errors import ServiceUnavailable
from common.settings import Settings
from gateway.service.dataplane import DataPlane
from gateway.service.organs import OrganRegistry
from services.spec import SERVICES_DIR
from tests.data import LIVER_SLICE
from tests.fixtures.stack import bearer
from tests.gateway.contract import assert_contract
from tests.gateway.fakes import FakeClient, FakeStore, png


def make_plane(tmp_path, clients=None, store=None, **limits) -> DataPlane:
    registry = OrganRegistry(SERVICES_DIR, tmp_path)
    clients = clients or {name: FakeClient() for name in registry.names()}
    return DataPlane(
        registry,
        clients,
        store or FakeStore(),
        results_bucket="results",
        record_segmentation=lambda session, record: None,
        max_upload_bytes=limits.get("max_upload_bytes", 2_000_000),
        max_image_pixels=limits.get("max_image_pixels", 4_000_000),
    )


@pytest.fixture
def client(tmp_path, http_client_for):
    return http_client_for(make_plane(tmp_path))


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    # params: the values the message names, when it names any (a client words the error by code with them)
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "params"} and body["error"][
        "message"
    ]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_healthz(client):
    assert client.get("/healthz").json()["status"] == "ok"


def test_readyz_names_what_is_down(tmp_path, http_client_for):
    plane = make_plane(
        tmp_path,
        {"liver": FakeClient(), "cells": FakeClient(error=ServiceUnavailable("x"))},
        FakeStore(fail_after=0),
    )
    error = assert_error(http_client_for(plane).get("/readyz"), 503, "not_ready")
    assert "organ:cells" in error["message"] and "objectstore" in error["message"]
    assert "organ:liver" not in error["message"]


def test_readyz_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["components"] == {
        "organ:liver": "ok",
        "organ:cells": "ok",
        "organ:hippocampus": "ok",
        "objectstore": "ok",
        "disk": "ok",
    }


def test_organs_lists_every_folder(client, api_keys):
    response = client.get("/api/v1/organs", headers=bearer(api_keys["evaluate"]))
    assert response.status_code == 200
    organs = {o["name"]: o for o in response.json()["organs"]}
    assert set(organs) == {"liver", "cells", "hippocampus"}
    assert organs["liver"]["ready"] is True and organs["liver"]["model"]["name"] == "liver"
    assert (organs["liver"]["labels"], organs["liver"]["dimensions"]) == (["liver"], 2)
    hippocampus = organs["hippocampus"]
    assert (hippocampus["labels"], hippocampus["dimensions"]) == (["anterior", "posterior"], 3)
    assert hippocampus["modality"] == "MR" and hippocampus["label"] == "hippocampus"


def test_segment_contract_shape(client, api_keys):
    with open(LIVER_SLICE, "rb") as fh:
        response = client.post(
            "/api/v1/segment",
            headers=bearer(api_keys["segment"]),
            data={"organ": "liver", "patient_id": "P-1"},
            files={"file": ("000.png", fh)},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_contract(body, 512, 512)
    assert body["organ"] == "liver"
    for m in [{"mask_png": body["probability_png"]}, *body["masks"]]:
        image = Image.open(io.BytesIO(base64.b64decode(m["mask_png"])))
        assert image.size == (512, 512) and image.mode == "L"


@pytest.mark.parametrize(
    "masks, thresholds",
    [("all", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), ("none", []), ("0.7,0.5", [0.5, 0.7]), ("0.3", [0.3])],
)
def test_segment_answers_the_masks_asked_for(tmp_path, http_client_for, api_keys, masks, thresholds):
    store = FakeStore()
    client = http_client_for(make_plane(tmp_path, store=store))
    image = png(np.zeros((40, 64), np.uint8))
    answers = [
        client.post(
            "/api/v1/segment",
            headers=bearer(api_keys["segment"]),
            data={"organ": "liver", **fields},
            files={"file": ("a.png", image)},
        ).json()
        for fields in ({}, {"masks": masks})
    ]
    everything, asked = answers
    assert [m["threshold"] for m in asked["masks"]] == thresholds
    by_threshold = {m["threshold"]: m for m in everything["masks"]}
    assert all(m == by_threshold[m["threshold"]] for m in asked["masks"])  # the same masks, fewer of them
    for field in ("stability", "doubtful", "suggested_threshold", "probability_png", "width", "height"):
        assert asked[field] == everything[field]
    assert len(store.objects) == 2  # one probability map per segmentation, whatever was asked


@pytest.mark.parametrize("masks", ["some", "0.55", "0.5;0.7", "0.9", "nan"])
def test_a_bad_masks_field_is_400_before_the_organ_server(tmp_path, http_client_for, api_keys, masks):
    organ, store = FakeClient(), FakeStore()
    client = http_client_for(make_plane(tmp_path, {"liver": organ, "cells": FakeClient()}, store))
    response = client.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver", "masks": masks},
        files={"file": ("a.png", png(np.zeros((32, 32), np.uint8)))},
    )
    error = assert_error(response, 400, "invalid_masks")
    assert "0.2" in error["message"] and organ.calls == 0 and store.objects == {}


def test_a_truncated_png_is_400_invalid_image_naming_the_file(tmp_path, http_client_for, api_keys):
    """Its header reads, so the organ server gets it and refuses it; its 400 stays the caller's 400."""
    organ = FakeClient()
    client = http_client_for(make_plane(tmp_path, {"liver": organ, "cells": FakeClient()}))
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    response = client.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver"},
        files={"file": ("slice-17.png", png(noise)[:-300])},
    )
    error = assert_error(response, 400, "invalid_image")
    assert "slice-17.png" in error["message"] and "truncated" in error["message"] and organ.calls == 1


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({}, 401, "missing_credentials"),
        ({"Authorization": "Basic abc"}, 401, "invalid_credentials"),
        ({"Authorization": "Bearer "}, 401, None),
        ({"Authorization": "Bearer msk_deadbeef_nope"}, 401, "unauthenticated"),
        ({"Authorization": "Bearer garbage"}, 401, "unauthenticated"),
    ],
)
def test_bad_credentials_are_401(client, headers, status, code):
    response = client.post(
        "/api/v1/segment",
        headers=headers,
        data={"organ": "liver"},
        files={"file": ("a.png", png(np.zeros((32, 32), np.uint8)))},
    )
    assert_error(response, status, code)
    assert_error(client.get("/api/v1/organs", headers=headers), status, code)


@pytest.mark.parametrize(
    "path, key",
    [
        ("/api/v1/segment", "evaluate"),
        ("/api/v1/segment", "other"),
        ("/api/v1/evaluate", "segment"),
        ("/api/v1/organs", "other"),
    ],
)
def test_wrong_scope_is_403(client, api_keys, path, key):
    if path.endswith("organs"):
        response = client.get(path, headers=bearer(api_keys[key]))
    else:
        response = client.post(
            path,
            headers=bearer(api_keys[key]),
            data={"organ": "liver"},
            files={"file": ("a.png", png(np.zeros((32, 32), np.uint8)))},
        )
    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize(
    "data, files, status, code, mentions",
    [
        ({}, {"file": ("a.png", b"x")}, 400, "invalid_input", "organ"),
        ({"organ": "liver"}, {}, 400, "invalid_input", "file"),
        ({"organ": "liver", "file": "not-a-file"}, {}, 400, "invalid_input", "file"),
        ({"organ": "kidney"}, None, 404, "unknown_organ", "liver"),
        ({"organ": "LIVER"}, None, 400, "invalid_organ", "lower-case"),
        ({"organ": "liver/../cells"}, None, 400, "invalid_organ", None),
        ({"organ": "x" * 500}, None, 400, "invalid_input", "organ"),
        ({"organ": "liver", "patient_id": "p" * 200}, None, 400, "invalid_input", "patient_id"),
    ],
)
def test_bad_fields_are_4xx(client, api_keys, data, files, status, code, mentions):
    if files is None:
        files = {"file": ("a.png", png(np.zeros((32, 32), np.uint8)))}
    response = client.post("/api/v1/segment", headers=bearer(api_keys["segment"]), data=data, files=files)
    error = assert_error(response, status, code)
    if mentions:
        assert mentions in error["message"]


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/api/v1/nope"), 404, "not_found")
    page = client.get("/nope")  # outside the API, people get the HTML 404 page
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert_error(client.get("/api/v1/segment"), 405, "method_not_allowed")
    assert_error(
        client.post("/api/v1/segment", content=b"{", headers={"content-type": "application/json"}), 401
    )


def test_unexpected_exception_is_generic_500(tmp_path, http_client_for, api_keys, caplog):
    plane = make_plane(
        tmp_path, {"liver": FakeClient(error=RuntimeError("secret internals")), "cells": FakeClient()}
    )
    response = http_client_for(plane).post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver"},
        files={"file": ("a.png", png(np.zeros((32, 32), np.uint8)))},
    )
    assert_error(response, 500, "internal")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret internals" in caplog.text
    # answered outside the middleware stack, yet with the security headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_organ_down_is_503_for_that_organ_only(tmp_path, http_client_for, api_keys):
    plane = make_plane(
        tmp_path,
        {
            "liver": FakeClient(
                error=ServiceUnavailable("organ server 'liver' is down", code="organ_unavailable")
            ),
            "cells": FakeClient(),
        },
    )
    client = http_client_for(plane)
    rgb = png(np.zeros((32, 32, 3), np.uint8))
    assert_error(
        client.post(
            "/api/v1/segment",
            headers=bearer(api_keys["segment"]),
            data={"organ": "liver"},
            files={"file": ("a.png", rgb)},
        ),
        503,
        "organ_unavailable",
    )
    ok = client.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "cells"},
        files={"file": ("a.png", rgb)},
    )
    assert ok.status_code == 200


def test_declared_oversized_body_is_refused_before_reading(tmp_path, http_client_for, api_keys):
    settings = Settings(max_upload_bytes=100_000)
    client = http_client_for(make_plane(tmp_path, max_upload_bytes=100_000), settings)
    seen = []

    def body():  # a generator: httpx sends it chunked, so the cap must work while streaming
        for _ in range(100):
            seen.append(1)
            yield b"x" * 65536

    response = client.post(
        "/api/v1/segment",
        headers={**bearer(api_keys["segment"]), "content-type": "multipart/form-data; boundary=b"},
        content=body(),
    )
    assert_error(response, 413, "payload_too_large")
    response = client.post(
        "/api/v1/segment",
        headers={**bearer(api_keys["segment"]), "content-length": str(10**9)},
        content=b"tiny",
    )
    assert_error(response, 413, "payload_too_large")


def test_oversized_file_part_is_413(tmp_path, http_client_for, api_keys):
    client = http_client_for(make_plane(tmp_path, max_upload_bytes=50_000), Settings(max_upload_bytes=50_000))
    big = png(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))
    assert len(big) > 50_000
    response = client.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver"},
        files={"file": ("big.png", big)},
    )
    assert assert_error(response, 413, "file_too_large")["params"] == {"name": "big.png", "limit": 50_000}


def test_evaluate_over_http(client, api_keys):
    image = png(np.zeros((32, 32), np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 24:] = 255  # the fake predicts the right half: Dice 2/3
    response = client.post(
        "/api/v1/evaluate",
        headers=bearer(api_keys["evaluate"]),
        data={"organ": "liver"},
        files=[("images", ("a.png", image)), ("labels", ("a_mask.png", png(mask)))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [i["filename"] for i in body["images"]] == ["a.png"]
    assert body["mean_dice"] == pytest.approx(2 / 3) and len(body["per_threshold"]) == 7
    mismatch = client.post(
        "/api/v1/evaluate",
        headers=bearer(api_keys["evaluate"]),
        data={"organ": "liver"},
        files=[("images", ("a.png", image)), ("labels", ("b.png", png(mask)))],
    )
    assert "no label for images" in assert_error(mismatch, 400, "label_mismatch")["message"]


def test_low_disk_refuses_uploads_with_507_and_readyz_says_why(tmp_path, http_client_for, api_keys):
    """Below `min_free_disk_bytes` free under the state dir: uploads get 507 insufficient_storage before the
    body is used (nothing segmented), reads still answer, /readyz is 503 naming the disk; 0 turns it off."""
    plane = make_plane(tmp_path)
    full = Settings(state_dir=tmp_path, min_free_disk_bytes=1 << 62)  # more than any disk has free
    client = http_client_for(plane, full)
    response = client.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver"},
        files={"file": ("x.png", LIVER_SLICE.read_bytes())},
    )
    error = assert_error(response, 507, "insufficient_storage")
    assert "disk is nearly full" in error["message"] and str(tmp_path) in error["message"]
    assert plane.clients["liver"].calls == 0
    assert client.get("/api/v1/organs", headers=bearer(api_keys["segment"])).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["components"]["disk"].startswith("low: ")
    assert "disk (low: " in ready.json()["error"]["message"]

    unguarded = http_client_for(plane, Settings(state_dir=tmp_path, min_free_disk_bytes=0))
    assert unguarded.get("/readyz").json()["components"]["disk"] == "ok"
    response = unguarded.post(
        "/api/v1/segment",
        headers=bearer(api_keys["segment"]),
        data={"organ": "liver"},
        files={"file": ("x.png", LIVER_SLICE.read_bytes())},
    )
    assert response.status_code == 200, response.text
