"""`make soak`: sustained segmentation load through both edges, with errors, latency and memory per process.

    .venv/bin/python -m tools.soak [--requests 500] [--concurrency 16] [--image PATH] [--api-key KEY]

Against the local stack `make up` started when it runs (an API key with scope `segment` is created for
the run and revoked afterwards, unless `--api-key` is given); otherwise on a stack of its own, started and
stopped exactly as `make bench` does (tools.bench.running_stack: object store, liver TorchServe, gateway).

`--requests` segmentations of one liver slice go through HTTP (POST /api/v1/segment), then as many through
gRPC (medseg.v1 Segment), each from `--concurrency` threads; the callers are the bench's, which check every
answer (7 masks at the image's size), so a wrong answer counts as an error, not as a fast request.
While it runs, the resident memory (RSS) of every process of the stack — the gateway, each TorchServe
frontend (java), its Python workers and launcher, the object store — is sampled; the table shows it before
the first request, at the end of each transport's run and its peak. The first run includes warm-up
(allocator pools, caches); a leak shows as growth over the second run too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from common.settings import Settings, get_settings
from tools import bench

logger = logging.getLogger(__name__)

TRANSPORTS = ("http", "grpc")
MB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A running gateway to load (the bench callers read http_url, grpc_address and api_key) and the
    process groups (name → pgid) whose memory is sampled."""

    http_url: str
    grpc_address: str
    api_key: str
    process_groups: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TransportResult:
    transport: str
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests_per_s: float
    first_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProcessMemory:
    process: str  # "<group>/<role>", e.g. "torchserve-liver/worker"
    pid: int
    start_mb: float  # before the first request
    after_mb: dict[str, float]  # when each transport's run ended, in order
    peak_mb: float
    end_mb: float


# --- memory ---------------------------------------------------------------------------------------------
def _role(cmdline: list[str]) -> str:
    """What a process of the stack is, from its command line."""
    joined = " ".join(cmdline)
    if "model_service_worker" in joined:
        return "worker"
    exe = Path(cmdline[0]).name if cmdline else "?"
    if "--start" in cmdline and any(Path(c).name == "torchserve" for c in cmdline):
        return "launcher"
    if exe == "java":
        return "frontend"
    if exe == "weed":
        return "weed"
    if "common.cli" in joined:
        return "gateway"
    return exe


def group_rss(pgid: int) -> dict[int, tuple[str, int]]:
    """{pid: (role, RSS bytes)} of the live processes in process group `pgid`."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with the dev environment; /proc does the same
        psutil = None
    found: dict[int, tuple[str, int]] = {}
    if psutil is not None:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getpgid(proc.pid) == pgid:
                    found[proc.pid] = (_role(proc.info["cmdline"] or []), proc.memory_info().rss)
            except (psutil.Error, ProcessLookupError):
                continue
        return found
    page = os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields[2] = pgrp, fields[21] = rss in pages
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
            found[int(stat.parent.name)] = (_role([c for c in cmdline if c]), int(fields[21]) * page)
        except (OSError, IndexError, ValueError):
            continue
    return found


class RssSampler:
    """Samples the RSS of every process in the named process groups every `interval` seconds."""

    def __init__(self, groups: dict[str, int], interval: float = 0.5):
        self.groups = groups
        self.interval = interval
        self.samples: dict[tuple[str, int], list[int]] = {}  # (process, pid) → RSS bytes over time
        self.checkpoints: dict[str, dict[tuple[str, int], int]] = {}  # name → RSS then, by process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)

    def sample(self) -> None:
        for name, pgid in self.groups.items():
            for pid, (role, rss) in group_rss(pgid).items():
                self.samples.setdefault((f"{name}/{role}", pid), []).append(rss)

    def checkpoint(self, name: str) -> None:
        """Sample now and remember it as `name` (e.g. the end of one transport's run)."""
        self.sample()
        self.checkpoints[name] = {key: rss[-1] for key, rss in self.samples.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()  # the start, before any request
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the end, after the last request

    def report(self) -> list[ProcessMemory]:
        return [
            ProcessMemory(
                name,
                pid,
                round(rss[0] / MB, 1),
                {
                    point: round(at[(name, pid)] / MB, 1)
                    for point, at in self.checkpoints.items()
                    if (name, pid) in at
                },
                round(max(rss) / MB, 1),
                round(rss[-1] / MB, 1),
            )
            for (name, pid), rss in sorted(self.samples.items())
        ]


# --- load -----------------------------------------------------------------------------------------------
def drive(transport: str, call: Callable[[], object], requests: int, concurrency: int) -> TransportResult:
    """`requests` calls from `concurrency` threads; a call that raises is an error (its message kept)."""
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        start = time.perf_counter()
        try:
            call()
        except Exception as exc:  # counted and reported, the run goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        elapsed = (time.perf_counter() - start) * 1000.0
        with lock:
            latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"soak-{transport}") as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start

    def pct(q: float) -> float | None:
        return round(bench.percentile(latencies, q), 1) if latencies else None

    return TransportResult(
        transport=transport,
        requests=requests,
        errors=len(errors),
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        requests_per_s=round(len(latencies) / wall, 2),
        first_errors=errors[:5],
    )


CALLERS = {"http": bench.gateway_http_caller, "grpc": bench.gateway_grpc_caller}


def run_soak(target: Target, image: bytes, requests: int, concurrency: int, interval: float = 0.5) -> dict:
    """Load `target` through every transport in turn while sampling memory; returns the report."""
    load_before = round(os.getloadavg()[0], 2)
    results = []
    with RssSampler(target.process_groups, interval) as sampler:
        for transport in TRANSPORTS:
            call, close = CALLERS[transport](target, image)
            try:
                print(f"{transport}: {requests} requests at concurrency {concurrency} …", flush=True)
                results.append(drive(transport, call, requests, concurrency))
            finally:
                close()
            sampler.checkpoint(transport)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),  # when the run ended
        "requests": requests,
        "concurrency": concurrency,
        "load_average_1m_before": load_before,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "transports": [asdict(r) for r in results],
        "memory": [asdict(m) for m in sampler.report()],
    }


def format_report(report: dict) -> str:
    lines = [
        f"## MedSeg soak — {report['when']}, {report['requests']} requests per transport at concurrency "
        f"{report['concurrency']}, {report['cpu_count']} CPUs, 1-min load average "
        f"{report['load_average_1m_before']} before, {report['load_average_1m_after']} after",
        "",
        "| transport | requests | errors | p50 ms | p95 ms | p99 ms | throughput req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(value) -> str:
        return "–" if value is None else f"{value:.1f}"

    for r in report["transports"]:
        lines.append(
            f"| {r['transport']} | {r['requests']} | {r['errors']} | {ms(r['p50_ms'])} | {ms(r['p95_ms'])} "
            f"| {ms(r['p99_ms'])} | {r['requests_per_s']:.2f} |"
        )
    for r in report["transports"]:
        for message in r["first_errors"]:
            lines.append(f"error ({r['transport']}): {message}")
    points = [r["transport"] for r in report["transports"]]
    lines += [
        "",
        "RSS of every process of the stack (MB), sampled during the run: before the first request, when each "
        "transport's run ended, the peak; the last column is the growth over the last run, after warm-up.",
        "",
        "| process | pid | start | "
        + " | ".join(f"after {p}" for p in points)
        + " | peak | last run growth |",
        "|---|---:|---:|" + "---:|" * len(points) + "---:|---:|",
    ]
    for m in report["memory"]:
        after = [m["after_mb"].get(p) for p in points]
        growth = after[-1] - after[-2] if len(after) > 1 and None not in after[-2:] else None
        lines.append(
            f"| {m['process']} | {m['pid']} | {m['start_mb']:.1f} | "
            + " | ".join("–" if a is None else f"{a:.1f}" for a in after)
            + f" | {m['peak_mb']:.1f} | {'–' if growth is None else f'{growth:+.1f}'} |"
        )
    return "\n".join(lines)


# --- which stack ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def local_stack_target(settings: Settings, api_key: str | None) -> Iterator[Target | None]:
    """The stack `make up` runs (None when its gateway is not running or not ready), with a key for it."""
    import httpx

    from gateway.core.db import make_engine, session_scope
    from gateway.security import create_api_key, revoke_api_key
    from tools.stack import stack_process_groups

    groups = stack_process_groups(settings)
    http_url = bench.gateway_http_url(settings)
    if "gateway" not in groups:
        yield None
        return
    try:
        ready = httpx.get(f"{http_url}/readyz", timeout=5.0).json().get("components", {})
    except (httpx.HTTPError, ValueError):
        ready = {}
    if ready.get("organ:liver") != "ok":
        print(
            f"the local stack runs but is not ready for liver ({ready}); starting one of its own", flush=True
        )
        yield None
        return
    engine = make_engine(settings.sqlalchemy_url)
    created = None
    try:
        if api_key is None:
            with session_scope(engine) as session:
                row, api_key = create_api_key(session, "soak", "segment", actor="soak")
                created = row.prefix
        yield Target(http_url, f"{settings.grpc_host}:{settings.grpc_port}", api_key, groups)
    finally:
        if created:
            with session_scope(engine) as session:
                revoke_api_key(session, created, actor="soak")
        engine.dispose()


@contextlib.contextmanager
def own_stack_target(model_store: Path) -> Iterator[Target]:
    """A stack of its own on free ports (as `make bench` starts it), stopped on exit."""
    tmp_root = Path(tempfile.mkdtemp(prefix="medseg-soak-"))
    try:
        work = tmp_root / "work"
        work.mkdir()
        choice = bench.choose_model(model_store, work)
        print(f"model: {choice.description}", flush=True)
        with bench.running_stack(tmp_root / "state", choice) as stack:
            groups = {
                "gateway": stack.process_groups["gateway"],
                f"torchserve-{bench.ORGAN}": stack.process_groups["torchserve"],
                "objectstore": stack.process_groups["objectstore"],
            }
            yield Target(stack.http_url, stack.grpc_address, stack.api_key, groups)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="segmentations per transport")
    parser.add_argument("--concurrency", type=int, default=16, help="callers in flight")
    parser.add_argument("--image", default=str(bench.DEFAULT_IMAGE), help="a 512×512 liver slice (PNG)")
    parser.add_argument(
        "--api-key", default=None, help="key for the running stack (default: one made for the run)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument(
        "--model-store", default=str(bench.REPO_ROOT / "model-store"), help="liver.mar for a stack of its own"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bench.unwind_on_sigterm()  # so a stack of our own is stopped
    image_path = Path(args.image)
    if not image_path.is_file():
        raise SystemExit(f"{image_path} not found: pass --image, a 512×512 liver slice (PNG)")
    image = image_path.read_bytes()
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(local_stack_target(get_settings(), args.api_key))
        if target is None:
            target = stack.enter_context(own_stack_target(Path(args.model_store)))
        else:
            print(f"loading the running local stack at {target.http_url}", flush=True)
        report = run_soak(target, image, args.requests, args.concurrency, args.interval)
    print()
    print(format_report(report))
    return 0 if all(r["errors"] == 0 for r in report["transports"]) else 1


if __name__ == "__main__":
    sys.exit(main())
