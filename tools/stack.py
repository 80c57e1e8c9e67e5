"""`python -m tools.stack up|down|status`: the local stack for development and a single server.

The stack is a process table (`process_table`): the object store, the local PACS (Orthanc, when
MEDSEG_PACS_URL names this machine and Orthanc is installed; else skipped with a warning), one TorchServe
per organ folder whose `.mar` is in model-store/ (an organ without one is skipped with a warning) and the
gateway. `stack up`
writes that table as a supervisord configuration (`<state>/supervisor/supervisord.conf`) and starts
supervisord (pinned in pyproject.toml), which starts every program and restarts any that exits, with
supervisord's back-off for one that keeps failing at start; stdout/stderr of each program go to
`<state>/logs/<program>.log`, rotated by size. Then `stack up` waits for /readyz and prints the URLs.
`stack up` is idempotent: with supervisord running it applies the table again (`supervisorctl update`:
a newly trained organ is added) and starts whatever is stopped. `stack status` shows each program's
state, pid, uptime and restart count (counted by an event listener into `restarts.json`, each restart also
an audit entry: common/supervision.py); `stack down` stops
supervisord, which stops every program (SIGTERM to its process group, SIGKILL after its grace period).

Every program runs through `python -m tools.stack run <program>`, which prepares what the process needs
(configuration files, no stale pid or key files) and then replaces itself with the real process (exec), so
supervisord watches, signals and restarts TorchServe, SeaweedFS, Orthanc or the gateway itself. To add a
process, add one row to `process_table` and one runner to `RUNNERS`.

Data lives under `.medseg/` and survives `down`/`up`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import supervision
from common.errors import MedSegError
from common.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    from tools import pacs_server

# What a program's runner needs is imported where it is needed: every restart of a program starts with
# `python -m tools.stack run <program>`, and the gateway's service layer (torch among it) alone took 3-5 s
# to import on the 2-core test machine, seconds every restart waited for.

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0
LOG_MAX_BYTES = "20MB"  # per program log file; `LOG_BACKUPS` older files are kept
LOG_BACKUPS = 5
START_RETRIES = 20  # failed starts in a row (a life shorter than `startsecs`) before supervisord gives up
# Ports of the object store's internal components (ObjectStorePorts fields as JSON), for a second stack on
# one machine (tests); the S3 port itself is MEDSEG_S3_ENDPOINT's.
OBJECTSTORE_PORTS_ENV = "MEDSEG_STACK_OBJECTSTORE_PORTS"


# --- the process table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    """One supervised process. `startsecs`: how long it must live to count as started (a shorter life is
    a failed start, retried after 1, 2, 3 … s); `stopwaitsecs`: grace between SIGTERM and SIGKILL."""

    name: str
    priority: int  # start order, lowest first (stopped in reverse)
    startsecs: int = 5
    stopwaitsecs: int = 20


def _organs_with_models(settings: Settings) -> tuple[list[str], list[str]]:
    from services.spec import organ_dirs

    ready, skipped = [], []
    for organ in organ_dirs(settings.services_dir):
        (ready if (settings.model_store_dir / f"{organ}.mar").is_file() else skipped).append(organ)
    return ready, skipped


def local_pacs(settings: Settings) -> pacs_server.PacsServer | None:
    """The local Orthanc the stack runs, or None: the configured PACS is elsewhere (a hospital's), or
    Orthanc is not installed (`make system-deps` installs it)."""
    from tools import pacs_server

    server = pacs_server.PacsServer.from_settings(settings)
    return server if server is not None and pacs_server.installed() else None


def process_table(settings: Settings) -> list[Program]:
    from tools.objectstore_server import STOP_GRACE_S

    organs, _ = _organs_with_models(settings)
    return [
        Program("objectstore", priority=10, startsecs=2, stopwaitsecs=STOP_GRACE_S),
        *([Program("pacs", priority=10, startsecs=2)] if local_pacs(settings) else []),
        *(Program(f"torchserve-{organ}", priority=20, stopwaitsecs=30) for organ in organs),
        Program("gateway", priority=30, stopwaitsecs=20),
        *(
            [Program("backup", priority=40, startsecs=2, stopwaitsecs=300)]
            if settings.backup_schedule
            else []
        ),
    ]


# --- runners: prepare, then exec the real process -----------------------------------------------------
@dataclass(frozen=True)
class Exec:
    argv: list[str]
    cwd: Path
    env: dict[str, str] | None = None  # None: ours


def _object_store(settings: Settings):
    from tools.objectstore_server import ObjectStorePorts, ObjectStoreServer

    override = os.environ.get(OBJECTSTORE_PORTS_ENV)
    ports = ObjectStorePorts(**json.loads(override)) if override else None
    server = ObjectStoreServer.from_settings(settings, ports)
    server.pid_path = pid_dir(settings) / "objectstore.pid"  # the pre-supervisord stack's pid file
    return server


def _run_objectstore(settings: Settings, _name: str) -> Exec:
    server = _object_store(settings)
    server.prepare()
    return Exec(server.command(), server.data_dir)


def _run_pacs(settings: Settings, _name: str) -> Exec:
    server = local_pacs(settings)
    if server is None:
        raise SystemExit(f"no local PACS to run (MEDSEG_PACS_URL {settings.pacs_url}, or Orthanc missing)")
    server.prepare()
    return Exec(server.command(), server.home)


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
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.core.db import make_engine, session_scope
    from gateway.service.model_registry import served_versions

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
    from common.model_store import mar_manifest

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
        from common.model_store import pull_archive
        from common.objectstore import ObjectStore

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
    TorchServe's default) and wait for it; the running OrganServer. `ports`: override the organ's configured
    ones (tests)."""
    server = _organ_server(settings, organ, ports)
    server.start(timeout=300)
    return server


def _organ_server(settings: Settings, organ: str, ports=None):
    """The organ's server with every version the model registry says it serves (default first)."""
    from common.launcher import LauncherError, OrganServer

    archives = organ_archives(settings, organ, registry_served(settings, organ))
    if not archives:
        raise LauncherError(f"nothing to serve for {organ}: no {organ}.mar in {settings.model_store_dir}")
    (default_name, default_mar), *also = archives
    return OrganServer(
        organ,
        settings.state_dir,
        settings.model_store_dir,
        models={default_name: default_mar},
        also_serve=also,
        ports=ports,
        services_dir=settings.services_dir,
    )


def _run_organ(settings: Settings, name: str) -> Exec:
    """TorchServe in place of this process (supervisord's program), with its default version; the other
    versions the registry serves are registered by a helper process once the server answers (`register`)."""
    from common.launcher import PID_FILE, REGISTERING_FILE

    organ = name.removeprefix("torchserve-")
    server = _organ_server(settings, organ)
    server.prepare()
    (server.dir / PID_FILE).write_text(f"{os.getpid()}\n")  # exec keeps the pid: `stop_from_state` finds it
    registering = server.dir / REGISTERING_FILE  # the gateway's readiness waits while it is there
    registering.unlink(missing_ok=True)
    if server.also_serve:
        registering.write_text(f"{os.getpid()}\n")  # this server's: a helper of a killed one leaves it
        subprocess.Popen(  # outlives the exec below: registers the candidates when the server is ready
            [sys.executable, "-m", "tools.stack", "register", organ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Exec(server.command(), server.dir, server.environment())


def register_also_served(settings: Settings, organ: str, timeout_s: float = 300.0) -> int:
    """`python -m tools.stack register ORGAN`: wait for the organ's server, then register the versions the
    registry serves besides its default (after a restart, the candidates under evaluation)."""
    from common.launcher import REGISTERING_FILE, LauncherError

    server = _organ_server(settings, organ)
    marker = server.dir / REGISTERING_FILE
    try:
        mine = marker.read_text()  # the server this helper was started for
    except OSError:
        mine = None
    try:
        server.wait_ready(timeout_s)
        registered = server.register_also_served(timeout_s)
    except LauncherError as exc:
        logger.error("%s: the other served versions are not registered: %s", organ, exc)
        return 1
    logger.info("%s: also serving %s", organ, ", ".join(registered) or "nothing else")
    try:
        if mine is not None and marker.read_text() == mine:  # not a newer server's (restarted meanwhile)
            marker.unlink()
    except OSError:
        pass
    return 0


def _run_gateway(settings: Settings, _name: str, wait_s: float = 60.0) -> Exec:
    """The gateway, once the object store answers with all its volumes (it is started first but takes a
    moment), so a normal start is not a failed one; after `wait_s` it starts anyway (and /readyz says why)."""
    from common.errors import ServiceUnavailable

    try:
        _object_store(settings).wait_ready(wait_s)
    except ServiceUnavailable as exc:
        logger.warning("starting the gateway without the object store: %s", exc.message)
    return Exec([sys.executable, "-m", "common.cli", "serve"], REPO_ROOT)


def _run_backup(settings: Settings, _name: str) -> Exec:
    """`medseg backup-scheduler`: backups on MEDSEG_BACKUP_SCHEDULE (gateway/core/backup_schedule.py)."""
    return Exec([sys.executable, "-m", "common.cli", "backup-scheduler"], REPO_ROOT)


RUNNERS: dict[str, Callable[[Settings, str], Exec]] = {
    "objectstore": _run_objectstore,
    "pacs": _run_pacs,
    "torchserve-": _run_organ,
    "gateway": _run_gateway,
    "backup": _run_backup,
}


def run_program(settings: Settings, name: str) -> int:
    """Prepare and exec program `name` (supervisord's command for it); never returns on success."""
    matches = [p for p in RUNNERS if name == p or (p.endswith("-") and name.startswith(p))]
    if not matches:
        raise SystemExit(f"no program {name!r} in the process table")
    spec = RUNNERS[matches[0]](settings, name)
    os.chdir(spec.cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(spec.argv[0], spec.argv, spec.env if spec.env is not None else dict(os.environ))
    return 1  # not reached


# --- supervisord --------------------------------------------------------------------------------------
def supervisor_dir(settings: Settings) -> Path:
    return supervision.supervisor_dir(settings.state_dir)


def pid_dir(settings: Settings) -> Path:
    return settings.state_dir / "pids"


def log_dir(settings: Settings) -> Path:
    return settings.state_dir / "logs"


def _conf_path(settings: Settings) -> Path:
    return supervisor_dir(settings) / "supervisord.conf"


def _socket_path(settings: Settings) -> Path:
    return supervisor_dir(settings) / "supervisor.sock"


def restarts_path(settings: Settings) -> Path:
    return supervision.restarts_path(settings.state_dir)


def _value(text: str | Path) -> str:
    """A supervisord config value: %-expansion escaped."""
    return str(text).replace("%", "%%")


def _command(*argv: str) -> str:
    return _value(shlex.join(argv))


def supervisord_config(settings: Settings) -> str:
    """The supervisord configuration of `process_table(settings)`."""
    logs = log_dir(settings).resolve()
    me = [sys.executable, "-m", "tools.stack"]
    lines = [
        "; written by `python -m tools.stack up` from its process table; edits are overwritten",
        "[unix_http_server]",
        f"file={_value(_socket_path(settings).resolve())}",
        "chmod=0700",
        "[supervisord]",
        f"logfile={_value(logs / 'supervisord.log')}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        f"pidfile={_value(supervisor_dir(settings).resolve() / 'supervisord.pid')}",
        f"childlogdir={_value(logs)}",
        f"directory={_value(REPO_ROOT)}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{_value(_socket_path(settings).resolve())}",
    ]
    for program in process_table(settings):
        lines += [
            f"[program:{program.name}]",
            f"command={_command(*me, 'run', program.name)}",
            f"directory={_value(REPO_ROOT)}",
            f"priority={program.priority}",
            "autostart=true",
            "autorestart=true",  # any exit, expected or not: a server that exits is restarted
            f"startsecs={program.startsecs}",
            f"startretries={START_RETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stopwaitsecs}",
            "stopasgroup=true",  # TorchServe's Java frontend and model workers are in the group
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_value(logs / (program.name + '.log'))}",
            f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
            f"stdout_logfile_backups={LOG_BACKUPS}",
        ]
    lines += [
        "[eventlistener:restart-counter]",
        f"command={_command(*me, 'count-restarts')}",
        f"directory={_value(REPO_ROOT)}",
        "events=PROCESS_STATE",
        "autorestart=true",
        f"stderr_logfile={_value(logs / 'restart-counter.log')}",
        f"stderr_logfile_maxbytes={LOG_MAX_BYTES}",
        f"stderr_logfile_backups={LOG_BACKUPS}",
    ]
    return "\n".join(lines) + "\n"


def _rpc(settings: Settings):
    """supervisord's XML-RPC interface over its unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{_socket_path(settings).resolve()}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_running(settings: Settings) -> bool:
    if not _socket_path(settings).exists():
        return False
    try:
        return _rpc(settings).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def _supervisorctl(settings: Settings, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("supervisorctl")), "-c", str(_conf_path(settings)), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr


def process_info(settings: Settings) -> list[dict]:
    """supervisord's view of each program (name, statename, pid, start, …), [] when it does not run."""
    if not supervisord_running(settings):
        return []
    return [p for p in _rpc(settings).supervisor.getAllProcessInfo() if p["group"] != "restart-counter"]


def read_restarts(settings: Settings) -> dict[str, int]:
    return supervision.read_restarts(settings.state_dir)


def audit_restart(settings: Settings, program: str, restarts: int, after: str) -> None:
    """The restart as an audit entry of the platform's (no hospital): actor `system:supervisord`, action
    `process.restarted`, target the program. A database that cannot be written is said, never fatal."""
    from gateway.core.system_audit import system_audit

    detail = {"restarts": restarts, "after": after}
    if not system_audit(settings, supervision.AUDIT_ACTOR, supervision.AUDIT_ACTION, program, detail):
        print(f"restart of {program} not in the audit log (see above)", file=sys.stderr, flush=True)


def count_restarts(settings: Settings) -> int:
    """supervisord event listener: counts each program's automatic restarts (a start after it exited or
    failed to start) into `restarts.json`, appends each to the audit log and logs it (stderr:
    restart-counter.log)."""
    from supervisor import childutils

    counts = read_restarts(settings)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"] == "PROCESS_STATE_STARTING":
            fields, _ = childutils.eventdata(payload + "\n")
            if fields.get("from_state") in ("EXITED", "BACKOFF"):
                name = fields["processname"]
                counts[name] = counts.get(name, 0) + 1
                supervision.write_restarts(settings.state_dir, counts)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                print(f"{stamp} restart {name} ({counts[name]})", file=sys.stderr, flush=True)
                audit_restart(settings, name, counts[name], fields["from_state"])
        childutils.listener.ok(sys.stdout)


# --- up / down / status -------------------------------------------------------------------------------
def _stop_unsupervised(settings: Settings) -> list[str]:
    """Stop what a stack before supervisord started (pid files under `.medseg/pids/`), so `make up` on a
    newer checkout takes over a running older stack."""
    from common.launcher import stop_from_state
    from services.spec import organ_dirs

    stopped = []
    if PidFile(pid_dir(settings) / "gateway.pid").stop():
        stopped.append("gateway")
    for organ in organ_dirs(settings.services_dir):
        organ_pid = PidFile(pid_dir(settings) / f"torchserve-{organ}.pid")
        if organ_pid.alive_pid() and stop_from_state(settings.state_dir, organ):
            stopped.append(f"torchserve-{organ}")
        organ_pid.path.unlink(missing_ok=True)
    if _object_store(settings).stop():
        stopped.append("objectstore")
    return stopped


def _wait_ready(settings: Settings, skipped: list[str], timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Poll /readyz until everything that was started answers (skipped organs may stay down)."""
    import httpx

    url = f"http://{settings.http_host}:{settings.http_port}/readyz"
    tolerated = {f"organ:{organ}" for organ in skipped}
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        fatal = [p["name"] for p in process_info(settings) if p["statename"] == "FATAL"]
        if fatal:
            raise SystemExit(f"{', '.join(fatal)} failed to start; see {log_dir(settings)}/<name>.log")
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
    from tools import pacs_server

    for folder in (supervisor_dir(settings), log_dir(settings)):
        folder.mkdir(parents=True, exist_ok=True)
    _, skipped = _organs_with_models(settings)
    for organ in skipped:
        logger.warning(
            "skipping organ %r: %s is missing (train it: `make train ORGAN=%s`)",
            organ,
            settings.model_store_dir / f"{organ}.mar",
            organ,
        )
    pacs = local_pacs(settings)
    if pacs is None and pacs_server.local_port(settings) is not None:
        logger.warning("skipping the local PACS: %s", pacs_server.INSTALL_HINT)
    if settings.backup_schedule:
        from gateway.core.backup_schedule import backup_dir, parse_schedule

        try:
            parse_schedule(settings.backup_schedule)
        except MedSegError as exc:
            raise SystemExit(exc.message) from None
        logger.info("backups %s into %s", settings.backup_schedule, backup_dir(settings))
    _conf_path(settings).write_text(supervisord_config(settings))
    if supervisord_running(settings):
        logger.info("supervisord already running: applying the process table")
        logger.info(_supervisorctl(settings, "update").strip() or "no change")
        _supervisorctl(settings, "start", "all")
    else:
        if stopped := _stop_unsupervised(settings):
            logger.info("stopped the unsupervised processes of an older stack: %s", ", ".join(stopped))
        # every program at 0 (Prometheus: a series that starts at 0 counts its first restart)
        supervision.write_restarts(settings.state_dir, {p.name: 0 for p in process_table(settings)})
        supervisord = Path(sys.executable).with_name("supervisord")
        subprocess.run([str(supervisord), "-c", str(_conf_path(settings))], check=True)  # daemonizes
        logger.info("supervisord started; logs in %s", log_dir(settings))
    components = _wait_ready(settings, skipped)
    print(f"MedSeg is up ({', '.join(f'{k}={v}' for k, v in components.items())})")
    print(f"  HTTP  http://{settings.http_host}:{settings.http_port}  (API docs /docs, readiness /readyz)")
    print(f"  gRPC  {settings.grpc_host}:{settings.grpc_port}  (medseg.v1.Segmentation, reflection on)")
    print(f"  S3    http://{settings.s3_endpoint}")
    if pacs is not None:
        print(f"  PACS  {pacs.url}  (Orthanc; credentials in {pacs.credentials_path})")
    else:
        print(f"  PACS  {settings.pacs_url}  (not run here)")
    return 0


def stack_down(settings: Settings, timeout_s: float = 120.0) -> int:
    stopped = [p["name"] for p in process_info(settings) if p["pid"]]
    if supervisord_running(settings):
        pid = int((supervisor_dir(settings) / "supervisord.pid").read_text())
        _rpc(settings).supervisor.shutdown()  # stops every program, then itself
        deadline = time.monotonic() + timeout_s
        while _start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    stopped += _stop_unsupervised(settings)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def stack_process_groups(settings: Settings) -> dict[str, int]:
    """Name → process group id of each program that runs (supervisord makes each program the leader of
    its own process group): "gateway", "torchserve-<organ>", "objectstore", "pacs"."""
    return {p["name"]: p["pid"] for p in process_info(settings) if p["pid"]}


def stack_status(settings: Settings) -> int:
    import httpx

    infos = process_info(settings)
    if not infos:
        print("supervisord is not running (`make up` starts the stack)")
    restarts = read_restarts(settings)
    now = time.time()
    for info in infos:
        running = info["statename"] == "RUNNING"
        detail = f"pid {info['pid']}, up {now - info['start']:.0f}s" if running else info["description"]
        name = info["name"]
        print(f"{name:22s} {info['statename']:9s} restarts={restarts.get(name, 0):<4d} {detail}")
    try:
        response = httpx.get(f"http://{settings.http_host}:{settings.http_port}/readyz", timeout=5.0)
        print(f"readyz: {response.status_code} {response.text}")
    except httpx.HTTPError as exc:
        print(f"readyz: no answer ({exc})")
    return 0


# --- pid files of the stack before supervisord (to stop an older running stack) ----------------------
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
        """SIGTERM the recorded process, SIGKILL after timeout. False if it was not running."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack",
        description="start/stop the local stack (object store, PACS, organs, gateway) under supervisord",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("up", stack_up, "start supervisord and what is not running, wait until ready"),
        ("down", stack_down, "stop every program and supervisord"),
        ("status", stack_status, "each program's state, pid and restart count; /readyz"),
        ("count-restarts", count_restarts, "(supervisord's event listener)"),
    ):
        actions.add_parser(name, help=text).set_defaults(func=func)
    run = actions.add_parser("run", help="(supervisord's command) prepare and exec one program")
    run.add_argument("program")
    register = actions.add_parser(
        "register", help="(an organ program's helper) serve the registry's other versions"
    )
    register.add_argument("organ")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "run":
        return run_program(get_settings(), args.program)
    if args.action == "register":
        return register_also_served(get_settings(), args.organ)
    return int(args.func(get_settings()) or 0)


if __name__ == "__main__":
    sys.exit(main())
