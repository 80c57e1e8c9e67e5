"""CI smoke run of the whole model path on real parts (issue 3, "Must show"):

dataset push (SeaweedFS) → `medseg train --dataset <id>` (1 epoch, tiny widths) → .mar + card → run files
in the runs bucket → registered as a new default version in a running liver TorchServe → segment through
the gateway (FastAPI app over the production DataPlane), which answers with the new version.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets import push_dataset
from common.settings import get_settings
from common.torchserve_client import InferenceClient
from tests.data import LIVER_TRAIN
from tests.fixtures.stack import bearer
from trainer.train import dataset_hash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIVER = LIVER_TRAIN
VERSION = "smoke-1"


@pytest.fixture
def small_liver_dataset(tmp_path) -> Path:
    if not LIVER.is_dir():
        pytest.skip(f"{LIVER} missing (../shared/data)")
    root = tmp_path / "liver-small"
    root.mkdir()
    for name in ("000", "001", "002", "003", "004", "005"):
        shutil.copy(LIVER / f"{name}.png", root)
        shutil.copy(LIVER / f"{name}_mask.png", root)
    return root


@pytest.fixture
def cli_settings(monkeypatch, tmp_path, s3_settings):
    """Point the CLI's Settings (read from the environment) at the test object store."""
    monkeypatch.setenv("MEDSEG_S3_ENDPOINT", s3_settings.s3_endpoint)
    monkeypatch.setenv("MEDSEG_S3_ACCESS_KEY", s3_settings.s3_access_key)
    monkeypatch.setenv("MEDSEG_S3_SECRET_KEY", s3_settings.s3_secret_key)
    monkeypatch.setenv("MEDSEG_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def liver_management(liver_management, torchserve_liver):
    """tests/trainer/conftest.py's client, and afterwards the shared session server left as other tests
    expect it: version 1, the default."""
    yield liver_management
    if VERSION in {d["modelVersion"] for d in liver_management.describe(torchserve_liver.model_name, "all")}:
        liver_management.set_default(torchserve_liver.model_name, torchserve_liver.version)
        liver_management.unregister(torchserve_liver.model_name, VERSION)


def test_push_train_register_segment(
    tmp_path,
    small_liver_dataset,
    cli_settings,
    objectstore,
    torchserve_liver,
    liver_management,
    gateway_engine,
    api_keys,
    http_client_for,
):
    from common.cli import main
    from gateway.service import build_dataplane

    manifest = push_dataset(objectstore, "liver", small_liver_dataset)
    # a folder keeps its hash when pushed
    assert dataset_hash(small_liver_dataset) == manifest["dataset_hash"]
    model_store, run_dir = tmp_path / "model-store", tmp_path / "run"
    argv = ["train", "--organ", "liver", "--dataset", manifest["id"]]
    argv += ["--epochs", "1", "--widths", "6,12,24", "--batch-size", "2", "--threads", "1"]
    argv += ["--run-dir", str(run_dir), "--run-id", "smoke-run", "--out", str(model_store)]
    argv += ["--version", VERSION, "--register", "--set-default", "--upload-run"]
    argv += ["--management-address", torchserve_liver.grpc_management_address]
    argv += ["--management-key-file", str(torchserve_liver.server.key_file)]
    assert main(argv) == 0

    # trained on the fetched dataset, and the card says which one
    card = json.loads((model_store / "liver.json").read_text())
    assert card["version"] == VERSION and card["run_id"] == "smoke-run"
    assert card["dataset"]["id"] == manifest["id"]
    assert card["dataset"]["hash"] == manifest["dataset_hash"] and card["dataset"]["pairs"] == 6
    cached = cli_settings.state_dir / "cache" / "datasets" / manifest["id"]
    assert len(list((cached / "images").iterdir())) == 6

    # run files and the archive are stored with their data
    runs = {o.key for o in objectstore.list(objectstore.buckets.runs, "liver/smoke-run/")}
    assert runs == {f"liver/smoke-run/{f}" for f in ("card.json", "metrics.json", "curves.png", "spec.yaml")}
    models = {o.key for o in objectstore.list(objectstore.buckets.models, "liver/")}
    assert {f"liver/liver-{VERSION}.mar", f"liver/liver-{VERSION}.json"} <= models

    # registered as a new version and made the default
    name = torchserve_liver.model_name
    assert {d["modelVersion"] for d in liver_management.describe(name, "all")} >= {"1", VERSION}
    assert liver_management.describe(name)[0]["modelVersion"] == VERSION

    # segment through the gateway, whose model store is where the run was published
    settings = cli_settings.model_copy(
        update={
            "model_store_dir": model_store,
            "organ_addresses": {"liver": torchserve_liver.grpc_inference_address},
            "organ_inference_keys": {"liver": torchserve_liver.inference_key},
            "database_url": gateway_engine.url.render_as_string(hide_password=False),
            "inference_timeout_s": 60.0,
        }
    )
    dataplane = build_dataplane(settings)
    try:
        image = (small_liver_dataset / "000.png").read_bytes()
        response = http_client_for(dataplane, settings).post(
            "/api/v1/segment",
            headers=bearer(api_keys["segment"]),
            data={"organ": "liver"},
            files={"file": ("000.png", image)},
        )
    finally:
        dataplane.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "liver", "version": VERSION}

    # ...and the map really came from the new version, not from version 1 behind a renamed card
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["probability_png"]))), dtype=float)
    with InferenceClient(torchserve_liver.grpc_inference_address, torchserve_liver.inference_key) as client:
        new, old = (
            np.asarray(Image.open(io.BytesIO(client.predict(name, image, version=v, timeout=60))), float)
            for v in (VERSION, torchserve_liver.version)
        )
    assert np.abs(served - new).mean() < 0.5
    assert np.abs(served - old).mean() > 2 * np.abs(served - new).mean() + 1
