"""`python -m tools.stack` bookkeeping: a pid file names exactly the process it started."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.cli import build_parser
from tools import stack
from tools.stack import PidFile


def test_pid_file_stops_exactly_its_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile = PidFile(tmp_path / "x.pid")
        pidfile.write(proc.pid)
        assert pidfile.alive_pid() == proc.pid
        assert pidfile.stop(timeout_s=10) is True
        assert proc.wait(timeout=10) is not None and not pidfile.path.exists()
        assert pidfile.stop() is False  # nothing left to stop
    finally:
        proc.kill()


def test_reused_pid_is_not_ours(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / "x.pid"
        PidFile(path).write(proc.pid)
        info = json.loads(path.read_text())
        path.write_text(json.dumps({**info, "start_time": info["start_time"] - 1}))  # same pid, other process
        assert PidFile(path).alive_pid() is None
        assert PidFile(path).stop() is False
        assert proc.poll() is None  # untouched
    finally:
        proc.kill()
        proc.wait()


def test_cli_exposes_serve_and_the_stack_tool_its_actions():
    assert callable(build_parser().parse_args(["serve"]).func)
    for action in ("up", "down", "status"):
        with pytest.raises(SystemExit) as exited:  # --help: the action exists and parses, nothing starts
            stack.main([action, "--help"])
        assert exited.value.code == 0


# --- the organ server's start step: the versions the registry names, their archives in the model store -----
def _mar(path, version: str, payload: bytes = b"") -> bytes:
    """A .mar as far as the start step reads one: its manifest (the version) and some bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": version}}))
        mar.writestr("payload", payload)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_the_start_step_pulls_what_the_registry_serves_and_keeps_the_shipped_default(
    clean_buckets, s3_settings, tmp_path, caplog
):
    from common.objectstore import sha256_of

    store, bucket = clean_buckets, clean_buckets.buckets.models
    model_store = tmp_path / "model-store"
    model_store.mkdir()
    _mar(model_store / "liver.mar", "1")
    two = _mar(tmp_path / "two.mar", "2", b"two")
    store.put_bytes(bucket, "liver/liver-2.mar", two)
    settings = s3_settings.model_copy(update={"model_store_dir": model_store})
    served = [
        stack.Served("liver", "2", "liver/liver-2.mar", sha256_of([two])),  # the default: pulled
        stack.Served("liver", "1", None, None),  # the shipped version: model-store/liver.mar
        stack.Served("liver", "3", "liver/liver-3.mar", None),  # not in the bucket: skipped
        stack.Served("liver", "0.9", None, None),  # shipped once, replaced since: skipped
    ]
    assert stack.organ_archives(settings, "liver", served) == [
        ("liver", "liver-2.mar"),
        ("liver", "liver.mar"),
    ]
    assert (model_store / "liver-2.mar").read_bytes() == two
    assert "liver version 3 is not served" in caplog.text and "liver 0.9: not in model-store/" in caplog.text

    store.delete(bucket, "liver/liver-2.mar")  # already in the model store: kept, not fetched again
    assert stack.organ_archives(settings, "liver", served[:1]) == [("liver", "liver-2.mar")]
    (model_store / "liver-2.mar").write_bytes(b"stale")  # not the recorded archive, and none to fetch:
    assert stack.organ_archives(settings, "liver", served[:2]) == [("liver", "liver.mar")]  # the shipped one
    assert "the default 2 cannot be served; serving the shipped liver.mar" in caplog.text
    # no registry yet (the first start): the shipped model
    assert stack.organ_archives(settings, "liver", None) == [("liver", "liver.mar")]
    missing = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'none' / 'medseg.db'}"})
    assert stack.registry_served(missing, "liver") is None
