"""The organ server's init container (k8s/base/organ-server/pull_model.py) against a real S3 server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.model_store import write_pin
from tests.k8s.conftest import K8S

SCRIPT = K8S / "base" / "organ-server" / "pull_model.py"
spec = importlib.util.spec_from_file_location("pull_model", SCRIPT)
pull_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pull_model)


def put_version(store, organ: str, version: str, payload: bytes) -> None:
    bucket = store.buckets.models
    store.put_bytes(bucket, f"{organ}/{organ}-{version}.mar", payload)
    store.put_bytes(bucket, f"{organ}/{organ}-{version}.json", b'{"version": "%s"}' % version.encode())


def test_pinned_version_is_pulled_with_its_card(clean_buckets, tmp_path):
    put_version(clean_buckets, "liver", "20250101.1", b"old archive")
    put_version(clean_buckets, "liver", "20250202.1", b"new archive")
    mar = pull_model.pull(clean_buckets, "liver", "20250101.1", tmp_path)
    assert mar == tmp_path / "liver.mar" and mar.read_bytes() == b"old archive"
    assert b"20250101.1" in (tmp_path / "liver.json").read_bytes()
    assert not list(tmp_path.glob("*.part"))


def test_pinned_is_the_buckets_pin_never_the_newest_archive(clean_buckets, tmp_path):
    put_version(clean_buckets, "liver", "20250101.1", b"old archive")
    put_version(clean_buckets, "liver", "20250202.1", b"new archive")  # newer, but not pinned
    write_pin(clean_buckets, "liver", "20250101.1", ["20250202.1"])
    version, also = pull_model.resolve(clean_buckets, "liver", "pinned", [])
    assert (version, also) == ("20250101.1", ["20250202.1"])
    assert pull_model.pull(clean_buckets, "liver", version, tmp_path).read_bytes() == b"old archive"
    # a version the Deployment names (the gateway's pin) wins over the bucket's
    assert pull_model.resolve(clean_buckets, "liver", "20250202.1", []) == ("20250202.1", [])


def test_no_pin_fails_naming_the_seed_job(clean_buckets, tmp_path):
    put_version(clean_buckets, "liver", "20250101.1", b"old archive")
    with pytest.raises(SystemExit, match="seed Job") as info:
        pull_model.resolve(clean_buckets, "liver", "pinned", [])
    assert "liver/serving.json" in str(info.value)


def test_missing_model_fails_with_the_fix_in_the_message(clean_buckets, tmp_path):
    put_version(clean_buckets, "cells", "20250303.1", b"cells archive")
    with pytest.raises(SystemExit, match="liver") as info:
        pull_model.pull(clean_buckets, "liver", "20990101.1", tmp_path)
    assert "register" in str(info.value)
    assert not (tmp_path / "liver.mar").exists()


def _run(s3_settings, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEG_")}
    environ.update(
        MEDSEG_S3_ENDPOINT=s3_settings.s3_endpoint,
        MEDSEG_S3_ACCESS_KEY=s3_settings.s3_access_key,
        MEDSEG_S3_SECRET_KEY=s3_settings.s3_secret_key,
        MEDSEG_MODEL_STORE_DIR=str(tmp_path / "model-store"),
        MEDSEG_STATE_DIR=str(tmp_path / "state"),
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=60
    )


def test_init_container_command_reads_its_environment(clean_buckets, s3_settings, tmp_path):
    put_version(clean_buckets, "cells", "20250303.1", b"cells archive")
    result = _run(s3_settings, tmp_path, MEDSEG_ORGAN="cells", MEDSEG_MODEL_VERSION="20250303.1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model-store" / "cells.mar").read_bytes() == b"cells archive"


def test_init_container_exits_non_zero_when_the_store_refuses(clean_buckets, s3_settings, tmp_path):
    result = _run(s3_settings, tmp_path, MEDSEG_ORGAN="cells", MEDSEG_MODEL_VERSION="1",
                  MEDSEG_S3_SECRET_KEY="wrong")  # fmt: skip
    assert result.returncode != 0
    assert "could not pull the cells model" in result.stderr


def test_versions_to_serve_beside_the_default_are_pulled_and_missing_ones_skipped(
    clean_buckets, s3_settings, tmp_path
):
    for version in ("1", "2", "3"):
        put_version(clean_buckets, "liver", version, f"archive {version}".encode())
    result = _run(s3_settings, tmp_path, MEDSEG_ORGAN="liver", MEDSEG_MODEL_VERSION="2",
                  MEDSEG_ALSO_SERVE="1,2,9,3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = tmp_path / "model-store"
    assert sorted(p.name for p in store.glob("*.mar")) == ["liver-1.mar", "liver-3.mar", "liver.mar"]
    assert (store / "liver.mar").read_bytes() == b"archive 2"
    assert (store / "liver-3.mar").read_bytes() == b"archive 3"
    assert "liver/liver-9.mar not found" in result.stderr


def test_the_pods_torchserve_serves_every_version_pulled(clean_buckets, tmp_path):
    """The model store pull_model.py fills, served with the organ ConfigMap's TS_LOAD_MODELS (real
    TorchServe): the default and a version beside it both answer, each by its version."""
    import numpy as np

    from common.launcher import OrganServer, free_ports
    from common.torchserve_client import InferenceClient
    from tests.api.conftest import png
    from tests.fixtures.torchserve import _require_runtime, build_test_mar
    from tests.k8s.conftest import by_kind, render

    _require_runtime()
    organ_model = next(
        c["data"] for n, c in by_kind(render(K8S / "overlays" / "dev"), "ConfigMap").items()
        if n.startswith("organ-model-liver")
    )  # fmt: skip
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
        built = build_test_mar("liver", tmp_path / version, "liver", version)
        clean_buckets.put_bytes(
            clean_buckets.buckets.models, f"liver/liver-{version}.mar", built.read_bytes()
        )
    store = tmp_path / "model-store"
    store.mkdir()
    pull_model.pull(clean_buckets, "liver", "2", store)
    pull_model.pull_also(clean_buckets, "liver", ["1"], store)
    load = {"load_models": organ_model["TS_LOAD_MODELS"]}  # what TS_LOAD_MODELS sets in the pod
    server = OrganServer(
        "liver", state_dir=tmp_path / "state", model_store=store, models={}, ports=free_ports(),
        extra_properties=load,
    )  # fmt: skip
    try:
        server.start(timeout=300)
        with InferenceClient(server.grpc_inference_address, server.keys.inference, timeout=120) as client:
            for version in ("1", "2"):
                assert client.predict("liver", png(np.full((64, 64), 100, dtype=np.uint8)), version=version)
    finally:
        server.stop()
