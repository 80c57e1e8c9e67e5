"""Dataset uploads over HTTP: who sees what, soft delete, refused zips leave nothing, store or database
failures give a 503 and no row; the audit log's CSV export. (The real-store tests: test_datasets_store.py.)"""

from __future__ import annotations

import csv
import io
import time
import zipfile

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from gateway.core.db import make_engine
from gateway.models import Dataset
from tests.api.conftest import png, small_dataset_zip
from tests.fixtures.db_lock import write_lock_held

IMAGE = png(np.full((32, 32), 90, np.uint8))
MASK = png(np.pad(np.full((8, 8), 255, np.uint8), 12))


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("000.png", IMAGE)
        zf.writestr("000_mask.png", b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros: ~1000:1
    return buf.getvalue()


BAD_ZIPS = {
    "path traversal": (_zip({"../000.png": IMAGE, "../000_mask.png": MASK}), "../000.png"),
    "absolute path": (_zip({"/etc/000.png": IMAGE}), "/etc/000.png"),
    "missing mask": (_zip({"000.png": IMAGE, "001.png": IMAGE, "001_mask.png": MASK}), "000.png"),
    "non-binary mask": (
        _zip({"000.png": IMAGE, "000_mask.png": png(np.arange(1024, dtype=np.uint8).reshape(32, 32))}),
        "000_mask.png",
    ),  # fmt: skip
    "corrupt image": (_zip({"000.png": b"\x89PNG\r\n\x1a\nnot really", "000_mask.png": MASK}), "000.png"),
    "mask size": (
        _zip({"000.png": IMAGE, "000_mask.png": png(np.zeros((16, 16), np.uint8))}),
        "000_mask.png",
    ),
    "zero entries": (_zip({}), "empty"),
    "not a zip": (b"just some text", "zip"),
}


def _rows(world) -> int:
    with world.session() as session:
        return session.scalar(select(func.count()).select_from(Dataset))


def _upload(client, data: bytes, organ="liver", **fields):
    return client.post("/api/v1/datasets", data={"organ": organ, **fields}, files={"file": ("set.zip", data)})


def test_upload_is_recorded_with_uploader_and_hospital_and_audited(world):
    doctor = world.client("doctor")
    response = _upload(doctor, small_dataset_zip(3), notes="three slices", name="trio")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["organ"], body["pair_count"], body["name"], body["notes"]) == (
        "liver",
        3,
        "trio",
        "three slices",
    )
    assert body["hospital"] == "St. Anna" and body["uploaded_by"] == f"user:{world.users['doctor'].id}"
    keys = {k for (_, k) in world.store.objects if k.startswith(body["id"] + "/")}
    assert f"{body['id']}/manifest.json" in keys and len(keys) == 3 * 2 + 1
    audit = world.client("admin").get("/api/v1/audit", params={"action": "dataset.", "target": body["id"]})
    assert [e["action"] for e in audit.json()["entries"]] == ["dataset.upload"]

    # researchers see every dataset; doctors their hospital's; a key its hospital's
    assert body["id"] in {
        d["id"] for d in world.client("researcher").get("/api/v1/datasets").json()["datasets"]
    }
    assert body["id"] in {
        d["id"] for d in world.client("key:datasets").get("/api/v1/datasets").json()["datasets"]
    }
    other = world.client("doctor_b")
    assert body["id"] not in {d["id"] for d in other.get("/api/v1/datasets").json()["datasets"]}
    assert other.get(f"/api/v1/datasets/{body['id']}").status_code == 404
    assert other.delete(f"/api/v1/datasets/{body['id']}").status_code == 404

    # soft delete by an admin: hidden, row and objects kept
    assert world.client("admin").delete(f"/api/v1/datasets/{body['id']}").json()["status"] == "deleted"
    assert doctor.get(f"/api/v1/datasets/{body['id']}").status_code == 404
    assert f"{body['id']}/manifest.json" in {k for (_, k) in world.store.objects}


def test_a_doctor_cannot_delete_a_colleagues_dataset(world):
    body = _upload(
        world.client("key:datasets"), small_dataset_zip(1)
    ).json()  # same hospital, uploaded by a key
    refused = world.client("doctor").delete(f"/api/v1/datasets/{body['id']}")
    assert refused.status_code == 403 and "uploader" in refused.json()["error"]["message"]


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_bad_zips_are_refused_naming_the_entry_and_leave_nothing(world, case):
    data, mentioned = BAD_ZIPS[case]
    objects, rows = dict(world.store.objects), _rows(world)
    response = _upload(world.client("doctor"), data)
    assert response.status_code == 400, response.text
    assert mentioned in response.json()["error"]["message"]
    assert world.store.objects == objects and _rows(world) == rows


def test_zip_bomb_is_refused_and_leaves_nothing(world):
    objects, rows = dict(world.store.objects), _rows(world)
    response = _upload(world.client("doctor"), _bomb())
    assert response.status_code == 400 and "zip bomb" in response.json()["error"]["message"]
    assert world.store.objects == objects and _rows(world) == rows


@pytest.mark.parametrize(
    "data, files, status, mentions",
    [
        ({}, {"file": ("set.zip", b"x")}, 400, "organ"),
        ({"organ": "liver"}, None, 400, "file"),
        ({"organ": "kidney"}, {"file": ("set.zip", small_dataset_zip(1))}, 400, "kidney"),
    ],
)
def test_bad_fields_are_400(world, data, files, status, mentions):
    response = world.client("doctor").post(
        "/api/v1/datasets", data=data, files=files or {"other": ("x", b"")}
    )
    assert response.status_code == status and mentions in response.json()["error"]["message"], response.text


def test_not_multipart_is_415_and_too_big_is_413_before_the_body_is_read(world):
    doctor = world.client("doctor")
    assert doctor.post("/api/v1/datasets", json={"organ": "liver"}).status_code == 415
    small = world.settings.model_copy(update={"max_dataset_upload_bytes": 1000})
    too_big = b"\0" * (200 * 1024)  # more than the limit plus the form overhead
    response = _upload(world.client("doctor", settings=small), too_big)
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]


def test_store_down_during_upload_is_503_and_no_row(world):
    rows = _rows(world)
    world.store.fail = True
    try:
        response = _upload(world.client("doctor"), small_dataset_zip(2))
    finally:
        world.store.fail = False
    assert response.status_code == 503 and "object store" in response.json()["error"]["message"]
    assert _rows(world) == rows


def _read_only_engine(world):
    url = world.engine.url
    if url.get_backend_name() == "sqlite":
        return make_engine(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    return create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})


def test_read_only_database_during_upload_is_503_and_the_objects_are_removed(world):
    engine = _read_only_engine(world)
    before = dict(world.store.objects)
    try:
        response = _upload(world.client("doctor", engine=engine), small_dataset_zip(2))
    finally:
        engine.dispose()
    assert response.status_code == 503 and "read-only" in response.json()["error"]["message"], response.text
    assert world.store.objects == before


def test_locked_database_gives_a_clear_error_not_a_hang(world):
    """Sign-in writes (audit); another writer holds the lock: 503 within the busy/lock timeout."""
    url = world.engine.url.render_as_string(hide_password=False)
    waiter = make_engine(url, busy_timeout_s=0.3)
    try:
        with write_lock_held(url, wait_s=10):
            started = time.monotonic()
            response = world.client("anonymous", engine=waiter).post(
                "/api/v1/auth/sign-in", json={"email": "nobody@example.org", "password": "whatever password"}
            )
            assert time.monotonic() - started < 30  # a hang, not a slow machine: busy timeout 0.3 s
            assert response.status_code == 503 and "locked" in response.json()["error"]["message"], (
                response.text
            )
    finally:
        waiter.dispose()


def test_audit_log_csv_export(world):
    world.client("anonymous").post(
        "/api/v1/auth/sign-in", json={"email": "=cmd|x@example.org", "password": "x" * 12}
    )
    response = world.client("admin").get("/api/v1/audit/export.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert set(rows[0]) == {"id", "at", "actor", "action", "target", "detail"}
    assert {"user.create", "sign_in.failed"} <= {r["action"] for r in rows}
    ids = [int(r["id"]) for r in rows]
    assert ids == sorted(ids, reverse=True)
    # a cell that a spreadsheet would run as a formula is neutralised
    assert any(r["target"] == "'=cmd|x@example.org" for r in rows)
    only = world.client("admin").get("/api/v1/audit/export.csv", params={"action": "sign_in.failed"})
    assert {r["action"] for r in csv.DictReader(io.StringIO(only.text))} == {"sign_in.failed"}


def test_audit_log_pages(world):
    admin = world.client("admin")
    first = admin.get("/api/v1/audit", params={"limit": 2}).json()
    assert len(first["entries"]) == 2 and first["next_before_id"] == first["entries"][-1]["id"]
    second = admin.get("/api/v1/audit", params={"limit": 2, "before_id": first["next_before_id"]}).json()
    assert second["entries"][0]["id"] < first["entries"][-1]["id"]
    assert admin.get("/api/v1/audit", params={"since": "2020-01-01T00:00:00"}).status_code == 200
