"""The real local stack under supervisord (`python -m tools.stack up`), on free ports in a temp state dir:
each process type killed with SIGKILL (its whole process group) under a small load is back with no manual
step (/readyz within 30 s, serving: see SERVING_WITHIN_S), its restart counted; requests in flight during
an organ or object-store outage get a clear 503, never a 500; the local PACS (Orthanc) killed is back with
its data. Only liver is served (one TorchServe: the machine is small)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from common.errors import ServiceUnavailable
from common.launcher import free_port, free_ports
from common.pacs import Pacs
from common.settings import REPO_ROOT, Settings
from tests.data import LIVER_TRAIN
from tests.fixtures.objectstore import free_objectstore_ports
from tests.fixtures.torchserve import repacked_with_current_code
from tests.pacsdata import stored_study
from tools import stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY_WITHIN_S = 30.0  # issue 22: /readyz 200 again, and serving, within 30 s of the kill
# /readyz is truthful: an organ is ready once its model's worker is READY
# (gateway/service/organ_readiness.py), so the first segmentation after it succeeds at once
# (TRUTHFUL_WITHIN_S: one call on a busy machine). The figures, with the organ's phases (new process,
# Ping, worker READY), are printed (-s) every run. (A restarted object store lists buckets, so /readyz says
# ok, seconds before its volume server has registered its volumes; the first write waits for that.)
SERVING_WITHIN_S = READY_WITHIN_S
TRUTHFUL_WITHIN_S = 10.0


def _liver_only_services(target: Path) -> Path:
    """services/ with liver alone, its TorchServe on free ports."""
    shutil.copytree(REPO_ROOT / "services", target, ignore=shutil.ignore_patterns("__pycache__"))
    for organ_dir in target.iterdir():
        if (organ_dir / "spec.yaml").is_file() and organ_dir.name != "liver":
            shutil.rmtree(organ_dir)
    ports = free_ports()
    config = target / "liver" / "config.properties"
    text = config.read_text()
    for key, port in (
        ("inference_address", ports.inference),
        ("management_address", ports.management),
        ("metrics_address", ports.metrics),
    ):
        text = re.sub(rf"^{key}=http://127.0.0.1:\d+$", f"{key}=http://127.0.0.1:{port}", text, flags=re.M)
    text = re.sub(
        r"^grpc_inference_port=\d+$", f"grpc_inference_port={ports.grpc_inference}", text, flags=re.M
    )
    text = re.sub(
        r"^grpc_management_port=\d+$", f"grpc_management_port={ports.grpc_management}", text, flags=re.M
    )
    config.write_text(text)
    return target


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    models = root / "model-store"
    models.mkdir()
    # the shipped weights with this checkout's handler code (what the next export serves: archives pack it)
    repacked_with_current_code(REPO_ROOT / "model-store" / "liver.mar", "liver", models)
    (models / "liver.json").symlink_to(REPO_ROOT / "model-store" / "liver.json")
    s3_ports = free_objectstore_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEG_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        MEDSEG_STATE_DIR=str(root / "state"),
        MEDSEG_SERVICES_DIR=str(_liver_only_services(root / "services")),
        MEDSEG_MODEL_STORE_DIR=str(models),
        MEDSEG_HTTP_PORT=str(free_port()),
        MEDSEG_GRPC_PORT=str(free_port()),
        MEDSEG_S3_ENDPOINT=f"127.0.0.1:{s3_ports.s3}",
        MEDSEG_PACS_URL=f"http://127.0.0.1:{free_port()}/dicom-web",  # the stack's own Orthanc
        MEDSEG_STACK_OBJECTSTORE_PORTS=json.dumps({k: v for k, v in vars(s3_ports).items() if v is not None}),
    )
    return env


def _tool(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def running_stack(stack_env):
    up = _tool(stack_env, "tools.stack", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        settings = Settings(
            **{
                k.removeprefix("MEDSEG_").lower(): v
                for k, v in stack_env.items()
                if k.startswith("MEDSEG_") and k != stack.OBJECTSTORE_PORTS_ENV
            }
        )
        yield settings, up.stdout
    finally:
        down = _tool(stack_env, "tools.stack", "down")
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="module")
def segment_key(stack_env, running_stack):
    created = _tool(
        stack_env, "common.cli", "api-key", "create", "--name", "fault-test", "--scopes", "segment"
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def _url(settings: Settings) -> str:
    return f"http://{settings.http_host}:{settings.http_port}"


def _segment(settings: Settings, key: str) -> httpx.Response:
    return httpx.post(
        f"{_url(settings)}/api/v1/segment",
        headers={"authorization": f"Bearer {key}"},
        data={"organ": "liver"},
        files={"file": ("000.png", (LIVER_TRAIN / "000.png").read_bytes())},
        timeout=60,
    )


class Load(threading.Thread):
    """One caller segmenting in a loop; every outcome is recorded (status code, or the exception's name)."""

    def __init__(self, settings: Settings, key: str):
        super().__init__(daemon=True)
        self.settings, self.key = settings, key
        self.outcomes: list[tuple[int | str, str]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                response = _segment(self.settings, self.key)
                code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
                self.outcomes.append((response.status_code, code))
                if response.status_code != 200:
                    time.sleep(0.5)  # a small load: a person retrying, not a storm
            except httpx.HTTPError as exc:
                self.outcomes.append((type(exc).__name__, ""))
                time.sleep(0.2)


def _restart_audits(settings: Settings, program: str) -> list[int]:
    """The restart counts of the platform's `process.restarted` audit entries of `program`, oldest first."""
    from sqlalchemy import select

    from gateway.core.db import make_engine, session_scope
    from gateway.models import AuditLog

    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            rows = list(
                session.scalars(
                    select(AuditLog)
                    .where(AuditLog.action == "process.restarted", AuditLog.target == program)
                    .order_by(AuditLog.id)
                )
            )
            assert all(r.actor == "system:supervisord" and r.hospital is None for r in rows)
            return [r.detail["restarts"] for r in rows]
    finally:
        engine.dispose()


class OrganPhases:
    """When a killed organ server's phases were first seen (seconds after the kill): supervisord's new
    process, TorchServe's Ping answering, its model's worker READY (management API)."""

    def __init__(self, settings: Settings, old_pid: int):
        self.settings, self.old_pid, self.seen = settings, old_pid, {}

    def poll(self, at: float) -> None:
        from common import model_store
        from common.launcher import configured_ports, read_keys, server_dir
        from common.torchserve_client import InferenceClient

        pid = stack.stack_process_groups(self.settings).get("torchserve-liver")
        if pid and pid != self.old_pid:
            self.seen.setdefault("new process", round(at, 1))
        if "new process" not in self.seen or "worker ready" in self.seen:
            return
        try:
            keys = read_keys(server_dir(self.settings.state_dir, "liver") / "key_file.json")
            address = f"127.0.0.1:{configured_ports('liver', self.settings.services_dir).grpc_inference}"
            with InferenceClient(address, keys.inference, timeout=1) as client:
                client.ping()
            self.seen.setdefault("ping", round(at, 1))
            with model_store.management_client("liver", self.settings, timeout=1) as management:
                if management.is_ready("liver"):
                    self.seen["worker ready"] = round(at, 1)
        except Exception:  # not there yet: no key file, refused, loading
            pass


def test_up_prints_the_urls_and_status_shows_each_program(running_stack, stack_env):
    settings, printed = running_stack
    assert "MedSeg is up (organ:liver=ok, objectstore=ok, disk=ok)" in printed
    assert f"HTTP  {_url(settings)}" in printed and f"S3    http://{settings.s3_endpoint}" in printed
    assert f"PACS  {settings.pacs_url}  (Orthanc; credentials in " in printed
    status = _tool(stack_env, "tools.stack", "status").stdout
    for name in ("objectstore", "pacs", "torchserve-liver", "gateway"):
        assert re.search(rf"^{name}\s+RUNNING\s+restarts=0\s+pid \d+", status, re.M), status
    assert "readyz: 200" in status
    conf = stack.supervisor_dir(settings) / "supervisord.conf"
    assert "stdout_logfile_maxbytes=20MB" in conf.read_text()  # logs rotated by size
    running = stack.stack_process_groups(settings)
    again = _tool(stack_env, "tools.stack", "up")  # idempotent: applies the table, restarts nothing
    assert again.returncode == 0 and "MedSeg is up" in again.stdout, again.stderr
    assert stack.stack_process_groups(settings) == running


@pytest.mark.parametrize("program", ["torchserve-liver", "gateway", "objectstore"])
def test_killed_program_is_back_and_serving(running_stack, segment_key, stack_env, program):
    settings, _ = running_stack
    first = _segment(settings, segment_key)
    assert first.status_code == 200, first.text
    before = stack.stack_process_groups(settings)
    restarts_before = stack.read_restarts(settings).get(program, 0)
    load = Load(settings, segment_key)
    load.start()
    time.sleep(1.0)
    os.killpg(before[program], signal.SIGKILL)  # the whole group: TorchServe's Java and workers too
    killed_at = time.monotonic()
    ready = served = None
    phases = OrganPhases(settings, before[program]) if program.startswith("torchserve-") else None
    while time.monotonic() - killed_at < 2 * SERVING_WITHIN_S and served is None:  # measure, then judge
        if phases:
            phases.poll(time.monotonic() - killed_at)
        try:
            if ready is None and httpx.get(f"{_url(settings)}/readyz", timeout=2).status_code == 200:
                ready = time.monotonic() - killed_at
            if ready is not None and _segment(settings, segment_key).status_code == 200:
                served = time.monotonic() - killed_at
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    load.stop.set()
    load.join(timeout=90)
    tally = Counter(f"{status} {code}".strip() for status, code in load.outcomes)
    print(f"\n{program}: /readyz 200 after {ready}s, first segmentation after {served}s; load: {dict(tally)}")
    if phases:
        print(f"{program} phases (s after the kill): {phases.seen}")
    assert ready is not None and served is not None, f"{program} not back within {2 * SERVING_WITHIN_S:.0f}s"
    assert ready <= READY_WITHIN_S and served <= SERVING_WITHIN_S, f"{program}: {ready:.1f}s / {served:.1f}s"
    if phases:  # an organ is ready when its worker is: the first call after /readyz 200 is served
        early = served - ready
        assert early <= TRUTHFUL_WITHIN_S, f"/readyz said 200 {early:.1f}s before {program} served"
    after = stack.stack_process_groups(settings)
    assert after[program] != before[program]
    assert stack.read_restarts(settings).get(program, 0) == restarts_before + 1
    exported = httpx.get(f"{_url(settings)}/metrics", timeout=10).text  # the gateway's Prometheus series
    assert f'medseg_process_restarts_total{{program="{program}"}} {restarts_before + 1}.0' in exported
    assert _restart_audits(settings, program) == list(range(1, restarts_before + 2))  # one entry per restart
    assert _segment(settings, segment_key).json()["model"] == first.json()["model"]  # the same version
    if program == "gateway":  # calls in flight die with the process: the client sees the connection drop
        allowed = {200, "ConnectError", "RemoteProtocolError", "ReadError"}
        assert {status for status, _ in load.outcomes} <= allowed, load.outcomes
    else:  # the gateway lives on: every call is answered, a 503 naming the outage or a success
        unavailable = {"service_unavailable", "organ_unavailable", "objectstore_unavailable"}
        assert all(
            status == 200 or (status == 503 and code in unavailable) for status, code in load.outcomes
        ), load.outcomes
    # supervisord shows STARTING until the new process has lived its `startsecs` (5 s), which a fast
    # recovery can still be within here; RUNNING must follow then, with the restart counted once
    line = re.compile(rf"^{program}\s+RUNNING\s+restarts={restarts_before + 1}\s", re.M)
    started = next(p for p in stack.process_table(settings) if p.name == program).startsecs
    deadline = time.monotonic() + started + 10
    status = _tool(stack_env, "tools.stack", "status").stdout
    while not line.search(status) and time.monotonic() < deadline:
        time.sleep(1.0)
        status = _tool(stack_env, "tools.stack", "status").stdout
    assert line.search(status), status


def test_killed_pacs_is_back_with_its_data(running_stack):
    """Orthanc SIGKILLed: supervisord starts it again on the same data and credentials."""
    settings, _ = running_stack
    pacs = Pacs.from_settings(settings)
    series = stored_study(pacs, count=2, patient_id="P-STACK")
    before = stack.stack_process_groups(settings)
    os.killpg(before["pacs"], signal.SIGKILL)
    killed_at, found = time.monotonic(), None
    while time.monotonic() - killed_at < READY_WITHIN_S and found is None:
        try:
            found = pacs.search_studies(patient_id="P-STACK")
        except ServiceUnavailable:
            time.sleep(0.5)
    print(f"\npacs: QIDO answers again after {time.monotonic() - killed_at:.1f}s")
    assert [s.study_uid for s in found or []] == [series[0].StudyInstanceUID]
    assert stack.stack_process_groups(settings)["pacs"] != before["pacs"]
    assert stack.read_restarts(settings).get("pacs", 0) == 1
