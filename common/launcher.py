"""Start and stop one TorchServe per organ as a child process we own.

    server = OrganServer("liver", state_dir=".medseg", model_store="model-store",
                         models={"liver": "liver.mar"}).start()
    server.grpc_inference_address, server.keys.inference   # what a client needs
    server.stop()

Layout under `<state_dir>/torchserve/<organ>/` (the server's working directory):
    config.properties   effective config: services/<organ>/config.properties + model store, load_models,
                        port / allowed_urls overrides
    key_file.json       written by TorchServe (token authorization): inference, management and API keys
    server.pid          process-group id of the running server (for `stop_from_state` in another process)
    registering         there while the local stack registers the versions served beside the default
                        (tools/stack.py); /readyz waits for it (gateway/service/organ_readiness.py)
    torchserve.out      the launcher's and Java's stdout/stderr;  logs/  TorchServe's own log4j logs
    tmp/                TMPDIR/TEMP: TorchServe's pid file and unpacked archives, so two organ servers (or
                        somebody else's TorchServe) never see each other's `.model_server.pid`.

The process is `torchserve --start --foreground --ncs` started in a new session: its process group holds
the Python launcher, the Java frontend and the Python model workers, and `stop()` signals exactly that
group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import MedSegError
from services.spec import SERVICES_DIR

logger = logging.getLogger(__name__)

PORT_KEYS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
KEY_FILE = "key_file.json"
PID_FILE = "server.pid"
REGISTERING_FILE = "registering"


class LauncherError(RuntimeError):
    """The organ server could not be started, did not become ready, or its state is unreadable."""


@dataclass(frozen=True)
class TokenKeys:
    """TorchServe token-authorization keys: `inference` for predictions and ping, `management` for the
    management API, `api` to ask TorchServe for fresh keys."""

    inference: str
    management: str
    api: str


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


@dataclass(frozen=True)
class GrpcTls:
    """TLS on an organ server's gRPC ports (TorchServe's enable_grpc_ssl): its certificate chain and private
    key, PEM files as TorchServe's gRPC server reads them (the key in PKCS#8), and what the launcher's own
    clients verify it with: the CA file and, when the certificate does not name the address's host, the name
    it carries."""

    certificate: Path
    private_key: Path
    ca_file: Path
    server_name: str | None = None


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def claim_port(port: int) -> bool:
    """Mark `port` handed out; False if this process handed it out before (the OS reuses a port as soon as it
    is closed, so two servers chosen one after the other could otherwise be given the same one)."""
    with _HANDED_OUT_LOCK:
        if port in _HANDED_OUT:
            return False
        _HANDED_OUT.add(port)
        return True


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range: no outgoing connection is ever given one of them, so a port
    chosen here stays free until the server it was chosen for binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 10001))


def _choose(host: str, count: int) -> list[int]:
    """`count` distinct free ports, held open together while choosing so they cannot repeat."""
    candidates = _below_ephemeral()
    socks, chosen = [], []
    try:
        for attempt in range(count * 200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            try:  # the OS's own pick (port 0) once a quarter of the tries under the ephemeral range failed
                sock.bind((host, random.choice(candidates) if attempt < count * 50 else 0))
            except OSError:
                continue
            if claim_port(port := sock.getsockname()[1]):
                chosen.append(port)
            if len(chosen) == count:
                return chosen
        raise OSError(f"no {count} free TCP ports on {host}")
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now and this process has not handed out before."""
    return _choose(host, 1)[0]


def free_ports(host: str = "127.0.0.1") -> Ports:
    """A server's five free ports, distinct and never handed out before by this process."""
    return Ports(*_choose(host, len(PORT_KEYS)))


def server_dir(state_dir: str | Path, organ: str) -> Path:
    """The organ server's working directory under the state dir."""
    return Path(state_dir) / "torchserve" / organ


def read_keys(key_file: str | Path) -> TokenKeys:
    """Parse the key_file.json TorchServe writes when token authorization is on."""
    path = Path(key_file)
    try:
        raw = json.loads(path.read_text())
        return TokenKeys(
            inference=raw["inference"]["key"], management=raw["management"]["key"], api=raw["API"]["key"]
        )
    except FileNotFoundError as exc:
        raise LauncherError(f"{path} not found: is the organ server running (with token auth on)?") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise LauncherError(f"{path} is not a TorchServe key file ({exc})") from exc


def read_properties(path: str | Path) -> dict[str, str]:
    """`key=value` lines of a .properties file, values as written (backslash escapes kept)."""
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def configured_ports(organ: str, services_dir: Path = SERVICES_DIR) -> Ports:
    """The ports services/<organ>/config.properties assigns to the organ."""
    props = read_properties(services_dir / organ / "config.properties")
    return Ports(
        inference=_port_of(props["inference_address"]),
        management=_port_of(props["management_address"]),
        metrics=_port_of(props["metrics_address"]),
        grpc_inference=int(props["grpc_inference_port"]),
        grpc_management=int(props["grpc_management_port"]),
    )


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\")


class OrganServer:
    """One TorchServe process serving one organ.

    models: {model name: .mar file name in the model store, or an allowed URL} loaded at start-up;
            None/empty starts an empty server (the trainer registers models later).
    also_serve: (model name, .mar file name in the model store) of the other versions to serve beside those
            defaults, registered (not as the default) before `start` returns: the versions the model
            registry says the organ serves besides its default (tools/stack.py). One that cannot be
            registered is logged and skipped: it must not keep the default from serving.
    ports:  override the organ's configured ports (tests: `free_ports()`).
    allowed_urls: comma-separated regexes of URLs the management API may fetch .mar files from
            (default: the organ's config.properties — the local object store's model bucket).
    grpc_tls: serve both gRPC ports over TLS (tests; the local stack stays plaintext on the loopback address).
    """

    def __init__(
        self,
        organ: str,
        state_dir: str | Path,
        model_store: str | Path,
        *,
        models: Mapping[str, str] | None = None,
        also_serve: Sequence[tuple[str, str]] = (),
        ports: Ports | None = None,
        allowed_urls: str | None = None,
        host: str = "127.0.0.1",
        services_dir: Path = SERVICES_DIR,
        extra_properties: Mapping[str, str] | None = None,
        grpc_tls: GrpcTls | None = None,
    ):
        self.organ = organ
        self.services_dir = Path(services_dir)
        base = self.services_dir / organ / "config.properties"
        if not base.is_file():
            raise LauncherError(f"{base} not found: every organ folder needs a TorchServe config.properties")
        self.base_config = base
        self.dir = server_dir(state_dir, organ).resolve()
        self.model_store = Path(model_store).resolve()
        self.models = dict(models or {})
        self.also_serve = list(also_serve)
        self.ports = ports or configured_ports(organ, self.services_dir)
        self.allowed_urls = allowed_urls
        self.host = host
        self.extra_properties = dict(extra_properties or {})
        self.grpc_tls = grpc_tls
        self.process: subprocess.Popen | None = None
        self._log = None

    # --- addresses and keys ---------------------------------------------------------------------

    @property
    def grpc_inference_address(self) -> str:
        return f"{self.host}:{self.ports.grpc_inference}"

    @property
    def grpc_management_address(self) -> str:
        return f"{self.host}:{self.ports.grpc_management}"

    @property
    def http_inference_url(self) -> str:
        return f"http://{self.host}:{self.ports.inference}"

    @property
    def http_management_url(self) -> str:
        return f"http://{self.host}:{self.ports.management}"

    @property
    def client_tls(self) -> dict:
        """The TLS arguments of a client of this server's gRPC ports (none: plaintext)."""
        if self.grpc_tls is None:
            return {}
        return {"ca_file": self.grpc_tls.ca_file, "server_name": self.grpc_tls.server_name}

    @property
    def key_file(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def keys(self) -> TokenKeys:
        """Read fresh from key_file.json (TorchServe rewrites it when keys are renewed)."""
        return read_keys(self.key_file)

    @property
    def config_file(self) -> Path:
        return self.dir / "config.properties"

    @property
    def log_file(self) -> Path:
        return self.dir / "torchserve.out"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # --- lifecycle ------------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Write the effective config.properties under the server dir and return its path."""
        props = read_properties(self.base_config)
        p = self.ports
        props.update(
            inference_address=f"http://{self.host}:{p.inference}",
            management_address=f"http://{self.host}:{p.management}",
            metrics_address=f"http://{self.host}:{p.metrics}",
            grpc_inference_address=self.host,
            grpc_inference_port=str(p.grpc_inference),
            grpc_management_address=self.host,
            grpc_management_port=str(p.grpc_management),
            model_store=_escape(str(self.model_store)),
        )
        if self.models:
            props["load_models"] = _escape(",".join(f"{name}={mar}" for name, mar in self.models.items()))
        else:
            props.pop("load_models", None)
        if self.allowed_urls is not None:
            props["allowed_urls"] = _escape(self.allowed_urls)
        if self.grpc_tls is not None:
            props.update(
                enable_grpc_ssl="true",
                certificate_file=_escape(str(Path(self.grpc_tls.certificate).resolve())),
                private_key_file=_escape(str(Path(self.grpc_tls.private_key).resolve())),
            )
        props.update({k: _escape(str(v)) for k, v in self.extra_properties.items()})
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# written by services/launcher.py from {self.base_config}; edits are overwritten"]
        lines += [f"{key}={value}" for key, value in props.items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        return self.config_file

    def environment(self) -> dict[str, str]:
        """The server's environment: ours without any TS_* variable. config.properties sets
        enable_envvars_config (the Kubernetes pods configure TorchServe through TS_* variables), so an
        inherited TS_MANAGEMENT_ADDRESS, TS_DISABLE_TOKEN_AUTHORIZATION or TS_CONFIG_FILE would silently
        override the written config, e.g. open the management API beyond the loopback address or without
        its token. Locally the written config is the only source."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("TS_")}
        env.update(
            TMPDIR=str(self.dir / "tmp"),
            TEMP=str(self.dir / "tmp"),
            LOG_LOCATION=str(self.dir / "logs"),
            METRICS_LOCATION=str(self.dir / "logs"),
        )
        return env

    def prepare(self) -> None:
        """Everything a start needs before the process runs: the effective config, tmp/ and logs/ folders,
        no stale key file (it must not pass for readiness) and no stale TorchServe pid file (after a SIGKILL
        its pid may belong to another process by now, and TorchServe would refuse to start)."""
        if not self.model_store.is_dir():
            raise LauncherError(f"model store {self.model_store} does not exist")
        self.write_config()
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        (tmp / ".model_server.pid").unlink(missing_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.key_file.unlink(missing_ok=True)

    def command(self) -> list[str]:
        """The foreground TorchServe command line (run in `self.dir` with `environment()`)."""
        return [
            _torchserve_executable(),
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(self.config_file),
            "--model-store",
            str(self.model_store),
        ]

    def start(self, timeout: float = 180.0) -> OrganServer:
        """Start TorchServe and wait until it answers and every start-up model has a ready worker."""
        if self.process is not None and self.process.poll() is None:
            raise LauncherError(f"{self.organ} server already running (pid {self.process.pid})")
        self.prepare()
        env = self.environment()
        cmd = self.command()
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        logger.info("starting %s server: %s", self.organ, " ".join(cmd))
        self.process = subprocess.Popen(
            cmd,
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals exactly this server's processes
        )
        (self.dir / PID_FILE).write_text(f"{self.process.pid}\n")
        try:
            self.wait_ready(timeout)
            self.register_also_served(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def register_also_served(self, timeout: float = 180.0) -> list[str]:
        """Register each `also_serve` archive (synchronously: its worker is ready when this returns); the
        versions registered, in order. One that fails is logged and skipped."""
        from common.torchserve_client import ManagementClient  # as in wait_ready: needs the generated stubs

        registered = []
        key = lambda: self.keys.management  # noqa: E731 - re-read: TorchServe may renew it
        with ManagementClient(self.grpc_management_address, key, timeout=timeout, **self.client_tls) as mgmt:
            for model_name, mar in self.also_serve:
                try:
                    message = mgmt.register(mar, model_name, synchronous=True, timeout=timeout)
                except MedSegError as exc:
                    logger.error("%s server: %s (%s) not served: %s", self.organ, mar, model_name, exc)
                    continue
                registered.append(mar)
                logger.info("%s server also serves %s: %s", self.organ, mar, message)
        return registered

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until the key file exists, Ping answers, and every start-up model has a READY worker."""
        from common.torchserve_client import InferenceClient, ManagementClient

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LauncherError(
                    f"{self.organ} server exited with code {self.process.returncode} during start-up; "
                    f"last lines of {self.log_file}:\n{self.log_tail()}"
                )
            if self.key_file.is_file():
                try:
                    keys = self.keys
                    tls = self.client_tls
                    inference = InferenceClient(self.grpc_inference_address, keys.inference, timeout=5, **tls)
                    with inference:
                        inference.ping()
                    mgmt = ManagementClient(self.grpc_management_address, keys.management, timeout=5, **tls)
                    with mgmt:
                        if all(mgmt.is_ready(name) for name in self.models):
                            logger.info("%s server ready on %s", self.organ, self.grpc_inference_address)
                            return
                except Exception as exc:  # not up yet: connection refused, model still loading, ...
                    last_error = exc
            time.sleep(0.5)
        raise LauncherError(
            f"{self.organ} server not ready after {timeout:.0f}s (last error: {last_error}); "
            f"last lines of {self.log_file}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.process is not None:
            _stop_group(self.process.pid, grace, wait=self.process.wait)
            self.process = None
        (self.dir / PID_FILE).unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> OrganServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_from_state(state_dir: str | Path, organ: str, grace: float = 20.0) -> bool:
    """Stop an organ server started by another process (`make down`); False if none was running.

    Only signals the recorded process group if its leader is still a TorchServe launched with this
    server's config file, so a recycled pid is never killed.
    """
    folder = server_dir(state_dir, organ).resolve()
    pid_file = folder / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        cmdline = []
    if str(folder / "config.properties").encode() not in cmdline:
        pid_file.unlink(missing_ok=True)
        return False
    _stop_group(pid, grace)
    pid_file.unlink(missing_ok=True)
    return True


def _stop_group(pgid: int, grace: float, wait=None) -> None:
    """SIGTERM the process group, wait up to `grace` s for its leader, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    if wait is not None:
        try:
            wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # the Java frontend and the workers may outlive the launcher process: wait for the whole group
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.2)
    if _group_alive(pgid):
        logger.warning("process group %d did not stop within %.0fs; killing it", pgid, grace)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of our own children count as gone
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _torchserve_executable() -> str:
    candidate = Path(sys.executable).with_name("torchserve")
    if candidate.is_file():
        return str(candidate)
    raise LauncherError(f"torchserve not found beside {sys.executable}; install the project (make up)")
