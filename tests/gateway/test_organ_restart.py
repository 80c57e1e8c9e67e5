"""Issue 15, finding 5: a restarted organ server serves every version the model registry says it serves, and a
version it does not serve is a 409 naming it, never a 503.

Real parts: a liver TorchServe started the way `make up` starts it (tools/stack.py `start_organ`: the
versions the registry names, their archives pulled from the models bucket), the real object store, a
migrated SQLite registry, the gateway's production data plane over HTTP and gRPC. The shipped model
(version 1) is the default; candidate cand-1 was recorded with its archive in the models bucket.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from medseg.v1 import clinic_pb2, clinic_pb2_grpc
from sqlalchemy.orm import sessionmaker

from common.launcher import free_ports
from common.model_store import upload_version
from common.settings import get_settings
from common.torchserve_client import ManagementClient
from gateway.core.db import get_db, make_engine, request_session, run_migrations, session_scope
from gateway.grpc_server import create_server
from gateway.main import create_app
from gateway.security import create_api_key
from gateway.service import build_dataplane
from gateway.service.model_registry import NewVersion, record_version, seed_from_model_store
from tests.fixtures.torchserve import _require_runtime, build_test_mar
from tests.gateway.fakes import png
from tools import stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANDIDATE = "cand-1"


IMAGE = png(np.full((32, 32), 90, np.uint8))
LABEL = png(np.pad(np.full((8, 8), 255, np.uint8), 12))


@pytest.fixture(scope="module")
def restartable(objectstore, s3_settings, tmp_path_factory):
    """Settings for a gateway and a liver organ server of their own (free ports, own state dir and model
    store), a registry with the shipped version 1 as the default and cand-1 recorded, and the server."""
    _require_runtime()
    root = tmp_path_factory.mktemp("restart")
    model_store = root / "model-store"
    model_store.mkdir()
    build_test_mar("liver", model_store, "liver", "1")  # the shipped model-store/liver.mar
    ports = free_ports()
    settings = s3_settings.model_copy(
        update={
            "state_dir": root / "state",
            "model_store_dir": model_store,
            "database_url": f"sqlite:///{root / 'medseg.db'}",
            "organ_addresses": {"liver": f"127.0.0.1:{ports.grpc_inference}"},
            "organ_inference_timeouts_s": {"liver": 60.0},
        }
    )
    run_migrations(settings.database_url)
    engine = make_engine(settings.database_url)
    candidate = upload_version(
        objectstore, build_test_mar("liver", root, "liver", CANDIDATE), "liver", CANDIDATE
    )
    dataplane = build_dataplane(settings)
    with session_scope(engine) as session:
        seed_from_model_store(session, dataplane.registry)
        new = NewVersion("liver", CANDIDATE, mar_key=candidate["mar_key"], mar_sha256=candidate["sha256"])
        record_version(session, "test", "liver", new)
        key = create_api_key(session, "evaluator", ["evaluate"])[1]
    server = stack.start_organ(settings, "liver", ports=ports)
    world = {"settings": settings, "engine": engine, "dataplane": dataplane, "key": key, "ports": ports}
    world["server"] = server
    yield world
    world["server"].stop()
    dataplane.close()
    engine.dispose()


@pytest.fixture(scope="module")
def app(restartable):
    settings = restartable["settings"]
    app = create_app(settings, restartable["dataplane"])
    factory = sessionmaker(bind=restartable["engine"], expire_on_commit=False)
    app.dependency_overrides[get_db] = lambda: (yield from request_session(factory))
    app.dependency_overrides[get_settings] = lambda: settings
    return app


@pytest.fixture(scope="module")
def http(app, restartable):
    client = TestClient(app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {restartable['key']}"
    return client


@pytest.fixture(scope="module")
def evaluations_stub(app, restartable):
    server, port = create_server(
        "127.0.0.1:0",
        app.state.dataplane,
        lambda: session_scope(restartable["engine"]),
        clinic=app.state.clinic,
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield clinic_pb2_grpc.EvaluationsStub(channel)
    channel.close()
    server.stop(0)


def _evaluate(http, version: str):
    return http.post(
        "/api/v1/evaluations",
        data={"organ": "liver", "version": version},
        files=[("images", ("p-1.png", IMAGE)), ("labels", ("p-1.png", LABEL))],
    )


def _served(restartable) -> dict[str, bool]:
    """Version → whether a worker of it is READY, as the organ server itself reports."""
    server = restartable["server"]
    with ManagementClient(server.grpc_management_address, server.keys.management, timeout=60) as mgmt:
        return {
            d["modelVersion"]: any(w.get("status") == "READY" for w in d.get("workers", []))
            for d in mgmt.describe("liver", "all")
        }


def _restart(restartable) -> None:
    """Stop the organ server and start it again as `make up` does (only the ports are the test's own)."""
    restartable["server"].stop()
    restartable["server"] = stack.start_organ(restartable["settings"], "liver", ports=restartable["ports"])


def test_a_restarted_organ_server_serves_the_registered_candidate(restartable, http):
    assert _served(restartable) == {"1": True, CANDIDATE: True}
    assert _evaluate(http, CANDIDATE).status_code == 201
    _restart(restartable)
    assert _served(restartable) == {"1": True, CANDIDATE: True}
    server = restartable["server"]
    with ManagementClient(server.grpc_management_address, server.keys.management, timeout=60) as mgmt:
        assert mgmt.describe("liver")[0]["modelVersion"] == "1"  # the registry's default stays TorchServe's
    evaluated = _evaluate(http, CANDIDATE)
    assert evaluated.status_code == 201, evaluated.text
    assert evaluated.json()["model_version"] == CANDIDATE
    assert _evaluate(http, "1").status_code == 201


def test_a_version_the_organ_server_does_not_serve_is_a_409_naming_it(restartable, http, evaluations_stub):
    server = restartable["server"]
    with ManagementClient(server.grpc_management_address, server.keys.management, timeout=60) as mgmt:
        mgmt.unregister("liver", CANDIDATE)
    try:
        refused = _evaluate(http, CANDIDATE)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "version_not_served" and CANDIDATE in error["message"], error
        request = clinic_pb2.RunEvaluationRequest(organ="liver", version=CANDIDATE)
        request.images.add(filename="p-1.png", image=IMAGE)
        request.labels.add(filename="p-1.png", image=LABEL)
        metadata = (("authorization", f"Bearer {restartable['key']}"),)
        with pytest.raises(grpc.RpcError) as info:
            evaluations_stub.RunEvaluation(request, metadata=metadata, timeout=120)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and CANDIDATE in info.value.details()
        assert dict(info.value.trailing_metadata())["medseg-error-code"] == "version_not_served"
    finally:
        _restart(restartable)  # serves it again: the registry still names it
    assert _evaluate(http, CANDIDATE).status_code == 201
