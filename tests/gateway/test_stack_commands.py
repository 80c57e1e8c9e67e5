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
