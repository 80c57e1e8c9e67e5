"""The organ server's init container (k8s/base/organ-server/pull_model.py) against a real S3 server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_latest_is_the_most_recently_stored_version_of_that_organ(clean_buckets, tmp_path):
    put_version(clean_buckets, "liver", "20250101.1", b"old archive")
    put_version(clean_buckets, "liver", "20250202.1", b"new archive")
    put_version(clean_buckets, "cells", "20250303.1", b"cells archive")
    assert pull_model.pull(clean_buckets, "liver", "latest", tmp_path).read_bytes() == b"new archive"


@pytest.mark.parametrize("version", ["latest", "20990101.1"])
def test_missing_model_fails_with_the_fix_in_the_message(clean_buckets, tmp_path, version):
    put_version(clean_buckets, "cells", "20250303.1", b"cells archive")
    with pytest.raises(SystemExit, match="liver") as info:
        pull_model.pull(clean_buckets, "liver", version, tmp_path)
    assert "register" in str(info.value) or "train" in str(info.value)
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
    result = _run(s3_settings, tmp_path, MEDSEG_ORGAN="cells", MEDSEG_S3_SECRET_KEY="wrong")
    assert result.returncode != 0
    assert "could not pull the cells model" in result.stderr
