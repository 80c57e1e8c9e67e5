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


def test_master_and_volume_metadata_need_the_stores_client_certificate(objectstore, objectstore_server):
    """Issue 15, finding 12: the master's topology (/dir/status, /vol/status, /cluster/status, its UI) and
    the volume server's /status (data path, disk usage) answered anyone on this machine. Their HTTP now
    needs TLS with a client certificate signed by the store's private CA; S3 keeps working."""
    import ssl

    objectstore.put_bytes(objectstore.buckets.results, "probe.txt", b"still works")
    assert objectstore.get_bytes(objectstore.buckets.results, "probe.txt") == b"still works"
    ports = objectstore_server.ports
    urls = [f"127.0.0.1:{ports.master}/dir/status", f"127.0.0.1:{ports.master}/vol/status",
            f"127.0.0.1:{ports.master}/cluster/status", f"127.0.0.1:{ports.master}/",
            f"127.0.0.1:{ports.volume}/status"]  # fmt: skip
    for url in urls:
        plain = httpx.get(f"http://{url}", timeout=5)  # plain HTTP on a TLS port
        assert plain.status_code == 400 and b"Topology" not in plain.content, (url, plain.content[:80])
    tls = objectstore_server.tls_files()
    no_cert = ssl.create_default_context(cafile=str(tls["ca"]))
    for url in urls:
        with pytest.raises(httpx.HTTPError):  # TLS without the client certificate: handshake refused
            httpx.get(f"https://{url}", verify=no_cert, timeout=5).raise_for_status()
    # the store's own tools (the readiness check) still read the topology, with the certificate
    assert objectstore_server._registered_volumes() >= 1
    for name in ("ca_key", "key"):
        assert stat.S_IMODE(tls[name].stat().st_mode) == 0o600


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


def _credentials_in_a_process(path: str, start: float) -> dict:
    import time

    from tools.objectstore_server import load_or_create_credentials

    time.sleep(max(0.0, start - time.time()))  # every process reaches the first start together
    return load_or_create_credentials(Path(path))


def test_programs_starting_together_agree_on_one_generated_secret(tmp_path):
    """The object store and the gateway of one first `make up` both create the S3 credentials: the first
    creation wins and every program gets its credentials (before, a second writer's rename failed or
    replaced them with another set)."""
    import multiprocessing
    import time

    from tools.managed_process import create_private

    first = tmp_path / "secret.json"
    assert create_private(first, "one") == "one" and create_private(first, "two") == "one"
    assert first.read_text() == "one" and stat.S_IMODE(first.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temporary file left

    path, start = tmp_path / "s3-credentials.json", time.time() + 1.0
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        seen = pool.starmap(_credentials_in_a_process, [(str(path), start)] * 4)
    assert all(creds == seen[0] for creds in seen) and json.loads(path.read_text()) == seen[0]
