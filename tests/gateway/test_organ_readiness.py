"""Readiness of a local organ server is its workers', not its Ping (issue 22: `/readyz` said 200 ~20 s before
a restarted TorchServe's model worker served): the probe against a real TorchServe (the test liver server,
reached through its management API with its key), a version it does not serve, and the local stack's
`registering` marker; and the DataPlane reporting what the probe says."""

from __future__ import annotations

import numpy as np
import pytest

from common import model_store
from common.launcher import REGISTERING_FILE, server_dir
from common.settings import Settings
from common.torchserve_client import ManagementClient
from gateway.service.organ_readiness import local_workers_probe, workers_state
from gateway.service.organs import ModelInfo, OrganRegistry
from services.spec import SERVICES_DIR
from tests.gateway.fakes import FakeClient, png, ramp
from tests.gateway.test_dataplane import make_plane


@pytest.fixture
def local(tmp_path, torchserve_liver, monkeypatch):
    """A probe for a gateway whose liver server is local (no address of its own), reaching the test server."""
    settings = Settings(state_dir=tmp_path / "state", model_store_dir=tmp_path)
    monkeypatch.setattr(
        model_store,
        "management_client",
        lambda organ, settings, timeout: ManagementClient(
            torchserve_liver.grpc_management_address, torchserve_liver.management_key, timeout=timeout
        ),
    )
    return settings, local_workers_probe(settings, OrganRegistry(SERVICES_DIR, tmp_path))


def test_ready_when_the_served_version_has_a_ready_worker(local, torchserve_liver):
    settings, probe = local
    served = ModelInfo(torchserve_liver.model_name, torchserve_liver.version)
    assert probe("liver", served, 5.0) == (True, "ok")
    assert probe("liver", ModelInfo("liver", "unknown"), 5.0) == (True, "ok")  # its default version
    ok, why = probe("liver", ModelInfo("liver", "99"), 5.0)
    assert not ok and why == "model version 99 not loaded"
    marker = server_dir(settings.state_dir, "liver") / REGISTERING_FILE
    marker.parent.mkdir(parents=True)
    marker.write_text("123\n")  # the stack still registers the candidates
    assert probe("liver", served, 5.0) == (False, "registering the other served versions")
    marker.unlink()
    assert probe("liver", served, 5.0) == (True, "ok")


def test_workers_state_reads_torchserve_descriptions():
    assert workers_state([{"workers": [{"status": "UNLOADING"}, {"status": "READY"}]}]) == "ok"
    loading = [{"workers": [{"status": "WORKER_STARTED"}]}]
    assert workers_state(loading) == "model loading (workers: WORKER_STARTED)"
    assert workers_state([{"workers": []}]) == "model loading (workers: none yet)"


def test_no_probe_for_organs_with_addresses_of_their_own(tmp_path):
    registry = OrganRegistry(SERVICES_DIR, tmp_path)
    remote = {o.name: f"torchserve-{o.name}:7070" for o in registry.all()}
    assert local_workers_probe(Settings(organ_addresses=remote), registry) is None  # Kubernetes: Ping
    assert local_workers_probe(Settings(model_rollout="kubernetes"), registry) is None


def test_readiness_and_the_organ_list_say_what_the_probe_says(tmp_path):
    registry = OrganRegistry(SERVICES_DIR, tmp_path)
    plane = make_plane(registry, {"liver": FakeClient(ramp), "cells": FakeClient(ramp)})
    plane.workers_probe = lambda organ, model, timeout: (
        (False, "model loading (workers: WORKER_STARTED)") if organ == "liver" else (True, "ok")
    )
    readiness = plane.readiness()
    assert readiness.components["organ:liver"] == "model loading (workers: WORKER_STARTED)"
    assert readiness.components["organ:cells"] == "ok" and readiness.down == ["organ:liver"]
    # an organ folder the plane has no client for (here hippocampus) cannot be reached: not ready
    expected = {o.name: o.name == "cells" for o in registry.all()}
    assert {s.name: s.ready for s in plane.list_organs()} == expected
    assert plane.segment(None, "cells", png(np.zeros((32, 32), np.uint8)), "x.png").organ == "cells"
