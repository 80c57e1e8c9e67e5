"""`python -m tools.stack` bookkeeping: a pid file names exactly the process it started."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.cli import build_parser
from tools import pacs_server, stack
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


def test_supervisord_config_has_one_restarting_program_per_process(tmp_path):
    """The process table as supervisord reads it: every program restarts on any exit, with back-off for
    failed starts, its whole process group stopped, its log rotated by size; the restart counter listens."""
    import configparser

    from common.settings import REPO_ROOT, Settings

    settings = Settings(state_dir=tmp_path)
    organs, _ = stack._organs_with_models(settings)
    parser = configparser.RawConfigParser()
    parser.read_string(stack.supervisord_config(settings))
    programs = [s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")]
    pacs = ["pacs"] if stack.local_pacs(settings) else []  # the local Orthanc, when installed
    assert programs == ["objectstore", *pacs, *(f"torchserve-{o}" for o in organs), "gateway"]
    assert organs  # the shipped .mar files of model-store/
    for name in programs:
        section = parser[f"program:{name}"]
        assert section["command"].endswith(f"-m tools.stack run {name}")
        assert section["autorestart"] == "true" and int(section["startretries"]) >= 10
        assert section["stopasgroup"] == section["killasgroup"] == "true"
        assert section["stdout_logfile"] == str(tmp_path / "logs" / f"{name}.log")
        assert (
            section["stdout_logfile_maxbytes"] == stack.LOG_MAX_BYTES
            and section["stdout_logfile_backups"] == "5"
        )
        assert section["directory"] == str(REPO_ROOT)
    assert [int(parser[f"program:{n}"]["priority"]) for n in programs] == sorted(
        int(parser[f"program:{n}"]["priority"]) for n in programs
    )  # started in order: store, organs, gateway
    assert parser["eventlistener:restart-counter"]["events"] == "PROCESS_STATE"
    assert parser["unix_http_server"]["chmod"] == "0700"  # only this user controls the stack


def test_run_refuses_a_program_outside_the_table():
    with pytest.raises(SystemExit, match="no program 'nginx'"):
        stack.main(["run", "nginx"])


def test_up_takes_over_from_a_stack_started_before_supervisord(tmp_path):
    """An older checkout's `make up` left processes with pid files under .medseg/pids/: the newer one stops
    exactly those before supervisord starts its own."""
    from common.settings import Settings

    settings = Settings(state_dir=tmp_path)
    old_gateway = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        PidFile(stack.pid_dir(settings) / "gateway.pid").write(old_gateway.pid)
        assert stack._stop_unsupervised(settings) == ["gateway"]
        assert old_gateway.wait(timeout=10) is not None
        assert stack._stop_unsupervised(settings) == []  # nothing left
    finally:
        old_gateway.kill()
        old_gateway.wait()


def test_the_local_pacs_is_a_program_only_when_it_is_local(tmp_path):
    """MEDSEG_PACS_URL naming this machine: the stack runs Orthanc (when installed); a hospital's: not."""
    from common.settings import Settings

    local = Settings(state_dir=tmp_path, pacs_url="http://127.0.0.1:18999/dicom-web")
    hospital = Settings(state_dir=tmp_path, pacs_url="https://pacs.hospital.example/dicom-web")
    names = lambda settings: [p.name for p in stack.process_table(settings)]  # noqa: E731
    assert ("pacs" in names(local)) == pacs_server.installed()
    assert "pacs" not in names(hospital)
    assert stack.local_pacs(hospital) is None


def test_scheduled_backups_are_a_program_only_with_a_schedule(tmp_path):
    """MEDSEG_BACKUP_SCHEDULE set: one more supervised program, `medseg backup-scheduler`, started last and
    given time to finish a backup when stopped; a schedule that is neither form stops `stack up` first."""
    from common.settings import Settings

    names = lambda settings: [p.name for p in stack.process_table(settings)]  # noqa: E731
    assert "backup" not in names(Settings(state_dir=tmp_path))
    scheduled = Settings(state_dir=tmp_path, backup_schedule="daily@02:00", backup_keep=7)
    assert names(scheduled)[-1] == "backup"
    assert stack.RUNNERS["backup"](scheduled, "backup").argv[-2:] == ["common.cli", "backup-scheduler"]
    with pytest.raises(SystemExit, match="daily@HH:MM"):
        stack.stack_up(Settings(state_dir=tmp_path, backup_schedule="nightly"))
    assert not stack.supervisord_running(scheduled)  # refused before anything started
