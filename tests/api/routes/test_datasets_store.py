"""Dataset uploads over HTTP into a real S3 server (SeaweedFS): the liver training set as a zip, refused
zips and a store outage leave no object and no row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.models import Dataset
from tests.api.conftest import small_dataset_zip
from tests.data import LIVER_TRAIN

pytestmark = pytest.mark.integration

LIVER = LIVER_TRAIN


@pytest.fixture
def s3_world(world, clean_buckets):
    """The module's world (database, people, keys) in front of the real object store."""
    return dataclasses.replace(world, store=clean_buckets, _apps={})


def _rows(world) -> int:
    with world.session() as session:
        return session.scalar(select(func.count()).select_from(Dataset))


def _objects(store) -> list[str]:
    return [o.key for o in store.list(store.buckets.datasets)]


@pytest.mark.slow
def test_liver_training_set_as_a_zip_gives_400_pairs_matching_the_manifest(s3_world, tmp_path):
    if not LIVER.is_dir():
        pytest.skip(f"shared data not found at {LIVER}")
    if s3_world.engine.dialect.name != "sqlite":
        pytest.skip("the upload path does not depend on the database backend; the 66 MB upload runs once")
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored: PNGs do not compress
        for path in sorted(LIVER.iterdir()):
            zf.write(path, f"train/{path.name}")
    with open(archive, "rb") as fh:
        response = s3_world.client("doctor").post(
            "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("train.zip", fh, "application/zip")}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["pair_count"] == 400 and body["name"] == "train"

    store = s3_world.store
    manifest = json.loads(store.get_bytes(store.buckets.datasets, f"{body['id']}/manifest.json"))
    assert manifest["pair_count"] == 400 and manifest["dataset_hash"] == body["dataset_hash"]
    for pair in manifest["pairs"]:
        for kind in ("image", "mask"):
            record = pair[kind]
            local = (LIVER / Path(record["source"]).name).read_bytes()
            assert hashlib.sha256(local).hexdigest() == record["sha256"] and len(local) == record["size"]
    assert len(_objects(store)) == 800 + 1
    stored = store.get_bytes(store.buckets.datasets, f"{body['id']}/{manifest['pairs'][7]['mask']['key']}")
    assert hashlib.sha256(stored).hexdigest() == manifest["pairs"][7]["mask"]["sha256"]
    with s3_world.session() as session:
        row = session.get(Dataset, body["id"])
        assert (row.size_bytes, row.hospital) == (manifest["size_bytes"], "St. Anna")


def test_a_refused_zip_leaves_no_object_and_no_row(s3_world):
    rows = _rows(s3_world)
    bad = small_dataset_zip(2)[:-40]  # truncated: the central directory is gone
    response = s3_world.client("doctor").post("/api/v1/datasets", data={"organ": "liver"},
                                              files={"file": ("set.zip", bad)})  # fmt: skip
    assert response.status_code == 400, response.text
    assert _objects(s3_world.store) == [] and _rows(s3_world) == rows


def test_object_store_down_during_upload_is_503_and_no_row(s3_world, objectstore_down):
    rows = _rows(s3_world)
    response = s3_world.client("doctor").post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("set.zip", small_dataset_zip(3))}
    )
    assert response.status_code == 503 and "object store" in response.json()["error"]["message"]
    assert _rows(s3_world) == rows
    objectstore_down.start(timeout=60)
    s3_world.store.ping()
    assert _objects(s3_world.store) == []
