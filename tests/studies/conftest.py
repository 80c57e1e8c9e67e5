"""A real study stack for the studies tests: the shipped liver weights on a real TorchServe (repacked with
this
checkout's handler code), the session's object store, and a real gateway process (`medseg serve`) with its
own database, which a test may kill and start again."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.data import SHARED_DATA
from tests.fixtures.torchserve import _require_runtime, repacked_with_current_code
from tests.hardening.live_gateway import LiveGateway, model_store_for

REPO = Path(__file__).resolve().parents[2]
STUDY_MAX_BYTES = 40 * 1024 * 1024
FINISHED = ("done", "failed")


@pytest.fixture(scope="module")
def study_work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="session")
def shipped_liver(tmp_path_factory):
    """TorchServe serving the shipped liver model (trained weights) as model "liver": one for the session, as
    the modules' gateways only read from it."""
    from common.launcher import OrganServer, free_ports

    _require_runtime()
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data")
    root = tmp_path_factory.mktemp("shipped-liver")
    store = root / "liver-store"
    store.mkdir()
    repacked_with_current_code(REPO / "model-store" / "liver.mar", "liver", store)
    server = OrganServer("liver", root / "state", store, models={"liver": "liver.mar"}, ports=free_ports())
    try:
        server.start(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def study_settings(study_work, s3_settings, objectstore, shipped_liver, torchserve_cells):
    """The live gateway's settings (a module overrides this fixture to add its own, e.g. a PACS)."""
    return study_settings_for(
        study_work,
        s3_settings,
        {
            "liver": (
                shipped_liver.grpc_inference_address,
                shipped_liver.keys.inference,
                shipped_liver.model_store,
                "liver",
            ),
            "cells": (
                torchserve_cells.grpc_inference_address,
                torchserve_cells.inference_key,
                torchserve_cells.model_store,
                torchserve_cells.model_name,
            ),
        },
    )


def study_settings_for(study_work: Path, s3_settings, servers: dict[str, tuple[str, str, Path, str]]):
    """The live gateway's settings over `servers`: organ → (gRPC address, inference key, model store, model
    name)."""
    return s3_settings.model_copy(
        update={
            "state_dir": study_work / "state",
            "model_store_dir": model_store_for(
                {organ: (store, name) for organ, (_, _, store, name) in servers.items()},
                study_work / "model-store",
            ),
            "organ_addresses": {organ: address for organ, (address, _, _, _) in servers.items()},
            "organ_inference_keys": {organ: key for organ, (_, key, _, _) in servers.items()},
            "study_max_bytes": STUDY_MAX_BYTES,
            "study_poll_s": 0.5,
            "study_stale_after_s": 4.0,
        }
    )


@pytest.fixture(scope="module")
def study_required() -> tuple[str, ...]:
    """What the live gateway waits for before the module's tests run (a module overrides it)."""
    return ("organ:liver", "objectstore")


@pytest.fixture(scope="module")
def study_gateway(study_work, study_settings, study_required):
    live = LiveGateway.create(study_settings, study_work)
    try:
        live.start(required=study_required)
        yield live
    finally:
        live.close()


def wait_finished(client: httpx.Client, study_id: str, timeout: float = 300.0) -> dict:
    """The study once done or failed (polling its Location), with every progress value seen on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/studies/{study_id}").json()
        seen.append(body["progress"])
        if body["status"] in FINISHED:
            body["_progress_seen"] = seen
            return body
        time.sleep(0.2)
    raise AssertionError(f"study {study_id} not finished after {timeout}s: {body}")
