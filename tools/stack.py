"""`python -m tools.stack up|down|status`: the local stack for development and a single server.

`stack up` is idempotent: it starts only what is not already running — the object store, the local PACS
(Orthanc, when MEDSEG_PACS_URL names this machine; skipped with a warning when Orthanc is not installed),
one TorchServe per organ folder whose `.mar` is in model-store/ (an organ without one is skipped with a
warning), and the gateway — then waits for /readyz and prints the URLs. Each process it starts gets a pid
file under `.medseg/pids/` holding the pid and the kernel start time, so `stack down` stops exactly those
processes (a reused pid is never signalled) and nothing else. Data lives under `.medseg/` and survives.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.exc import SQLAlchemyError

from common.errors import MedSegError
from common.model_store import mar_manifest, pull_archive
from common.objectstore import ObjectStore
from common.settings import Settings, get_settings
from gateway.core.db import make_engine, session_scope
from gateway.service.model_registry import served_versions
from tools import pacs_server

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0


# --- pid files ----------------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, to tell our process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


class PidFile:
    def __init__(self, path: Path):
        self.path = path

    def write(self, pid: int, **extra) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": pid, "start_time": _start_time(pid), **extra}))

    def alive_pid(self) -> int | None:
        """The recorded pid if that very process still runs."""
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        pid = int(info["pid"])
        return pid if _start_time(pid) == info.get("start_time") else None

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM the recorded process group's leader, SIGKILL after timeout. False if it was not running."""
        pid = self.alive_pid()
        if pid is None:
            self.path.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if _start_time(pid) is not None:
            logger.warning("pid %s ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
        self.path.unlink(missing_ok=True)
        return True


def pid_dir(settings: Settings) -> Path:
    return settings.state_dir / "pids"


def log_dir(settings: Settings) -> Path:
    return settings.state_dir / "logs"


def _object_store(settings: Settings):
    from tools.objectstore_server import ObjectStoreServer

    server = ObjectStoreServer.from_settings(settings)
    server.pid_path = pid_dir(settings) / "objectstore.pid"
    return server


def _pacs(settings: Settings) -> pacs_server.PacsServer | None:
    """The local Orthanc, or None when the configured PACS is elsewhere (a hospital's)."""
    return pacs_server.PacsServer.from_settings(settings, pid_path=pid_dir(settings) / "pacs.pid")


def _start_pacs(settings: Settings) -> str:
    """Start the local PACS; what to print about it."""
    server = _pacs(settings)
    if server is None:
        return f"{settings.pacs_url}  (the configured PACS; not started here)"
    if not pacs_server.installed():
        logger.warning("skipping the local PACS: %s", pacs_server.INSTALL_HINT)
        return "not running (Orthanc is not installed)"
    server.start()
    return f"{server.url}  (Orthanc; credentials in {server.credentials_path})"


def _organs_with_models(settings: Settings) -> tuple[list[str], list[str]]:
    from services.spec import organ_dirs

    ready, skipped = [], []
    for organ in organ_dirs(settings.services_dir):
        (ready if (settings.model_store_dir / f"{organ}.mar").is_file() else skipped).append(organ)
    return ready, skipped


def _organ_pid(settings: Settings, organ: str) -> PidFile:
    return PidFile(pid_dir(settings) / f"torchserve-{organ}.pid")


@dataclass(frozen=True)
class Served:
    """A version the organ serves, as the model registry records it."""

    model_name: str
    version: str
    mar_key: str | None  # its archive in the models bucket; None: the shipped model-store/<organ>.mar
    mar_sha256: str | None


def registry_served(settings: Settings, organ: str) -> list[Served] | None:
    """The versions the model registry (the gateway's database) says the organ serves, default first; None
    when there is no registry to ask yet (the first start: the gateway creates and seeds it)."""
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            rows = served_versions(session, organ)
            return [Served(r.model_name, r.version, r.mar_key, r.mar_sha256) for r in rows]
    except (SQLAlchemyError, MedSegError) as exc:
        logger.info("no model registry to ask what %s serves (%s): the shipped model only", organ, exc)
        return None
    finally:
        engine.dispose()


def organ_archives(settings: Settings, organ: str, served: list[Served] | None) -> list[tuple[str, str]]:
    """(model name, .mar file in the model store) of each version `served`, default first: the shipped
    <organ>.mar for the shipped version, else its archive pulled from the models bucket (kept when already
    there). A version that cannot be had is skipped with a warning; without the default (or a registry),
    the shipped archive is served as the default, so the organ still answers."""
    shipped = settings.model_store_dir / f"{organ}.mar"
    shipped_version = str(mar_manifest(shipped).get("modelVersion")) if shipped.is_file() else None
    pulled = _Puller(settings, organ)
    archives, has_default = [], False
    for n, row in enumerate(served or []):
        archive = shipped.name if row.mar_key is None and row.version == shipped_version else pulled(row)
        if archive:
            archives.append((row.model_name, archive))
            has_default = has_default or n == 0
    if not has_default and shipped.is_file():
        if served:
            logger.warning("%s: the default %s cannot be served; serving the shipped %s instead",
                           organ, served[0].version, shipped.name)  # fmt: skip
        archives = [(organ, shipped.name), *(a for a in archives if a[1] != shipped.name)]
    return archives


class _Puller:
    """A served version's archive from the models bucket into the model store (one store client, made when
    first needed); None, with a warning, when it cannot be had."""

    def __init__(self, settings: Settings, organ: str):
        self.settings, self.organ, self.store = settings, organ, None

    def __call__(self, row: Served) -> str | None:
        if row.mar_key is None:
            logger.warning("%s %s: not in model-store/ (which ships another)", self.organ, row.version)
            return None
        dest = self.settings.model_store_dir / row.mar_key.rsplit("/", 1)[-1]  # the name TorchServe gives it
        try:
            self.store = self.store or ObjectStore.from_settings(self.settings)
            return pull_archive(self.store, row.mar_key, dest, row.mar_sha256).name
        except MedSegError as exc:
            logger.warning("%s version %s is not served: %s", self.organ, row.version, exc.message)
            return None


def start_organ(settings: Settings, organ: str, ports=None):
    """Start the organ's server with every version the model registry says it serves (the default as
    TorchServe's default); the running OrganServer. `ports`: override the organ's configured ones (tests)."""
    from common.launcher import LauncherError, OrganServer

    archives = organ_archives(settings, organ, registry_served(settings, organ))
    if not archives:
        raise LauncherError(f"nothing to serve for {organ}: no {organ}.mar in {settings.model_store_dir}")
    (default_name, default_mar), *also = archives
    server = OrganServer(
        organ,
        settings.state_dir,
        settings.model_store_dir,
        models={default_name: default_mar},
        also_serve=also,
        ports=ports,
        services_dir=settings.services_dir,
    )
    return server.start()


def _start_organ(settings: Settings, organ: str) -> None:
    pidfile = _organ_pid(settings, organ)
    if pid := pidfile.alive_pid():
        logger.info("%s organ server already running (pid %s)", organ, pid)
        return
    server = start_organ(settings, organ)
    pidfile.write(server.pid, organ=organ)


def _stop_organ(settings: Settings, organ: str) -> bool:
    """Stop the organ server's process group (the launcher checks it is still our TorchServe)."""
    from common.launcher import stop_from_state

    stopped = stop_from_state(settings.state_dir, organ)
    _organ_pid(settings, organ).path.unlink(missing_ok=True)
    return stopped


def _gateway_pid(settings: Settings) -> PidFile:
    return PidFile(pid_dir(settings) / "gateway.pid")


def _start_gateway(settings: Settings) -> None:
    pidfile = _gateway_pid(settings)
    if pid := pidfile.alive_pid():
        logger.info("gateway already running (pid %s)", pid)
        return
    log_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(log_dir(settings) / "gateway.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write(proc.pid)
    logger.info("gateway starting (pid %s); log in %s", proc.pid, log_dir(settings) / "gateway.log")


def _wait_ready(settings: Settings, skipped: list[str], timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Poll /readyz until everything that was started answers (skipped organs may stay down)."""
    url = f"http://{settings.http_host}:{settings.http_port}/readyz"
    tolerated = {f"organ:{organ}" for organ in skipped}
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        if _gateway_pid(settings).alive_pid() is None:
            raise SystemExit(f"the gateway exited; see {log_dir(settings) / 'gateway.log'}")
        try:
            body = httpx.get(url, timeout=5.0).json()
            components = body.get("components", {})
            down = {name for name, state in components.items() if state != "ok"}
            if components and down <= tolerated:
                return components
            last = ", ".join(sorted(down))
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"stack not ready after {timeout_s:.0f}s (down: {last}); logs in {log_dir(settings)}")


def stack_up(settings: Settings) -> int:
    pid_dir(settings).mkdir(parents=True, exist_ok=True)
    _object_store(settings).start()
    pacs = _start_pacs(settings)
    organs, skipped = _organs_with_models(settings)
    for organ in skipped:
        logger.warning(
            "skipping organ %r: %s is missing (train it: `make train ORGAN=%s`)",
            organ,
            settings.model_store_dir / f"{organ}.mar",
            organ,
        )
    for organ in organs:
        _start_organ(settings, organ)
    _start_gateway(settings)
    components = _wait_ready(settings, skipped)
    print(f"MedSeg is up ({', '.join(f'{k}={v}' for k, v in components.items())})")
    print(f"  HTTP  http://{settings.http_host}:{settings.http_port}  (API docs /docs, readiness /readyz)")
    print(f"  gRPC  {settings.grpc_host}:{settings.grpc_port}  (medseg.v1.Segmentation, reflection on)")
    print(f"  S3    http://{settings.s3_endpoint}")
    print(f"  PACS  {pacs}")
    return 0


def stack_down(settings: Settings) -> int:
    stopped = []
    if _gateway_pid(settings).stop():
        stopped.append("gateway")
    from services.spec import organ_dirs

    for organ in organ_dirs(settings.services_dir):
        if _stop_organ(settings, organ):
            stopped.append(f"torchserve-{organ}")
    if _object_store(settings).stop():
        stopped.append("objectstore")
    if (pacs := _pacs(settings)) and pacs.stop():
        stopped.append("pacs")
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def stack_process_groups(settings: Settings) -> dict[str, int]:
    """Name → process group id of each part of the stack that runs (each was started in a session of its
    own, so its pid is its group): "gateway", "torchserve-<organ>", "objectstore", "pacs"."""
    from services.spec import organ_dirs

    groups = {"gateway": _gateway_pid(settings).alive_pid()}
    groups.update(
        {f"torchserve-{o}": _organ_pid(settings, o).alive_pid() for o in organ_dirs(settings.services_dir)}
    )
    groups["objectstore"] = _object_store(settings).running_pid()
    groups["pacs"] = (pacs := _pacs(settings)) and pacs.running_pid()
    return {name: pid for name, pid in groups.items() if pid}


def stack_status(settings: Settings) -> int:
    from services.spec import organ_dirs

    rows = [("gateway", _gateway_pid(settings).alive_pid())]
    rows += [
        (f"torchserve-{o}", _organ_pid(settings, o).alive_pid()) for o in organ_dirs(settings.services_dir)
    ]
    rows.append(("objectstore", _object_store(settings).running_pid()))
    rows.append(("pacs", (pacs := _pacs(settings)) and pacs.running_pid()))
    for name, pid in rows:
        print(f"{name:20s} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
    try:
        response = httpx.get(f"http://{settings.http_host}:{settings.http_port}/readyz", timeout=5.0)
        print(f"readyz: {response.status_code} {response.text}")
    except httpx.HTTPError as exc:
        print(f"readyz: no answer ({exc})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description="start/stop the local stack (object store, PACS, organ servers, gateway)",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("up", stack_up, "start what is not running and wait until ready"),
        ("down", stack_down, "stop what `stack up` started"),
        ("status", stack_status, "show what runs"),
    ):
        actions.add_parser(name, help=text).set_defaults(func=func)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(get_settings()) or 0)


if __name__ == "__main__":
    sys.exit(main())
