"""What the local servers `make up` starts from this checkout share (the object store, the PACS): a process in
a session of its own, recorded in a pid file with its kernel start time so that only that very process is
ever signalled (a reused pid is not ours), stopped with SIGTERM and SIGKILL after a grace period, its log's
tail for error messages; files written private (0600); whether a loopback port is free."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by the owner only (created 0600, never world-readable in between)."""
    tmp = _private_tmp(path, text)
    os.replace(tmp, path)


def create_private(path: Path, text: str) -> str:
    """Create a secret file once (0600) and return its text: the first process to create it wins and every
    other gets the winner's text, so programs starting together agree on one generated secret (the object
    store and the gateway of one `make up` both create its credentials on a first start)."""
    tmp = _private_tmp(path, text)
    try:
        os.link(tmp, path)  # atomic, and fails when the file exists
    except FileExistsError:
        text = path.read_text()
    finally:
        tmp.unlink()
    return text


def _private_tmp(path: Path, text: str) -> Path:
    """`text` in a 0600 file beside `path`, named for this process (concurrent writers never share one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return tmp


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port (SO_REUSEADDR: TIME_WAIT sockets of a stopped server are ok)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell our process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: it has exited
        return None
    return int(fields[19])


class ManagedProcess:
    """Process control of one local server; a subclass sets `name`, `pid_path`, `log_path`, implements
    `wait_ready(timeout)` and starts its process with `launch(...)`."""

    name = "server"
    pid_path: Path
    log_path: Path
    _proc: subprocess.Popen | None = None

    def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def launch(self, args: list[str], *, cwd: Path, timeout: float, where: str, **record) -> int:
        """Start `args` in a session of its own (Ctrl-C in the terminal of `make up` must not stop it
        mid-write), output appended to the log, its pid file written (with `record`), then wait until it is
        ready; stopped again when it is not. `where`: what the log line says it serves."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid = self._proc.pid
        write_private(self.pid_path, json.dumps({"pid": pid, "start_time": proc_start_time(pid), **record}))
        logger.info("%s starting (pid %s): %s", self.name, pid, where)
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return pid

    def running_pid(self) -> int | None:
        """Pid of the process this state dir started, if it is still that process and alive."""
        try:
            info = json.loads(self.pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        pid = int(info["pid"])
        if proc_start_time(pid) != info.get("start_time"):
            return None  # gone, or the pid now belongs to someone else
        return pid

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process this state dir started, SIGKILL after `timeout`; False if none ran."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> bool:
        """SIGKILL it at once, as a crash would (fault tests)."""
        return self._signal(signal.SIGKILL, 5.0)

    def _signal(self, sig: int, timeout: float) -> bool:
        pid = self.running_pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        logger.info("stopping the %s (pid %s)", self.name, pid)
        os.kill(pid, sig)
        if not self._wait_exit(pid, timeout):
            logger.warning("the %s (pid %s) ignored SIGTERM for %.0fs; killing it", self.name, pid, timeout)
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 5.0)
        self.pid_path.unlink(missing_ok=True)
        self._proc = None
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:  # our child: reap it, or it lingers as a zombie
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc_start_time(pid) is None:
                return True
            time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(line.strip() for line in text.splitlines()[-lines:])
