"""The local SeaweedFS process: loopback only, credentials private, JWT-guarded filer, exact stop."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.objectstore import free_objectstore_ports
from tools.objectstore_server import ObjectStoreServer, _proc_start_time

pytestmark = pytest.mark.integration


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            if table == "tcp":
                ip = ".".join(str(int(hex_ip[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::1" if hex_ip == "0" * 24 + "01000000" else hex_ip
            found.add((ip, int(hex_port, 16)))
    return found


def test_listens_on_loopback_only_and_on_the_configured_ports(objectstore_server):
    addresses = _listening_addresses(objectstore_server.running_pid())
    assert addresses, "weed listens on nothing?"
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}
    expected = set(objectstore_server.ports.all_ports().values())
    assert {port for _, port in addresses} <= expected


def test_credentials_file_is_private_and_anonymous_s3_is_refused(objectstore_server):
    mode = stat.S_IMODE(objectstore_server.credentials_path.stat().st_mode)
    assert mode == 0o600
    response = httpx.get(f"http://{objectstore_server.endpoint}/", timeout=5)
    assert response.status_code == 403


def test_filer_refuses_unsigned_reads(objectstore, objectstore_server):
    # Without the generated JWT keys the filer's plain HTTP API would bypass S3 auth.
    objectstore.put_bytes(objectstore.buckets.results, "secret.txt", b"patient data")
    url = (
        f"http://127.0.0.1:{objectstore_server.ports.filer}/buckets/{objectstore.buckets.results}/secret.txt"
    )
    response = httpx.get(url, timeout=5)
    assert response.status_code == 401
    assert b"patient data" not in response.content


def test_stop_never_signals_a_process_it_did_not_start(tmp_path):
    server = ObjectStoreServer(tmp_path, free_objectstore_ports())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # the pid file names a live process, but its start time is not the one we recorded: a reused pid
        server.pid_path.write_text(
            json.dumps({"pid": other.pid, "start_time": _proc_start_time(other.pid) + 1})
        )
        assert server.running_pid() is None
        assert server.stop() is False
        assert other.poll() is None
        assert not server.pid_path.exists()
    finally:
        other.kill()
        other.wait()


def test_start_refuses_a_busy_port(tmp_path, objectstore_server):
    ports = free_objectstore_ports()
    clash = type(ports)(**{**ports.__dict__, "s3": objectstore_server.ports.s3})
    server = ObjectStoreServer(tmp_path, clash)
    with pytest.raises(Exception, match=f"s3={objectstore_server.ports.s3}"):
        server.start(timeout=10)
    assert server.running_pid() is None
