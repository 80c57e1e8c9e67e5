"""`make bench`: latency and throughput of one liver slice (or cells tile) along five paths, own stack.

    .venv/bin/python -m tools.bench [--organ liver|cells] [--requests 30] [--concurrency 8] [--burst 48]
                                      [--image PATH] [--model-store DIR] [--breakdown | --breakdown-only]
    e.g. a cells tile: .venv/bin/python -m tools.bench --organ cells --requests 3 --burst 4 --concurrency 2

What it starts (free ports, a temporary state dir, all stopped at the end, also on error or Ctrl-C):
the local object store (SeaweedFS), the organ's TorchServe (`model-store/<organ>.mar` when it exists, else
a .mar built now from an untrained ERU-Net), and the gateway (`medseg serve`, HTTP and gRPC) as a
subprocess, with an API key created through gateway.security.

Paths, each timed from the caller's side with the same image bytes:
  in-process     decode → services.preprocess.prepare → TorchScript forward (mirror images where the spec
                 says) → sigmoid → restore → 8-bit PNG, the organ handler's work without TorchServe (the
                 model is read from the same .mar); the baseline of every ratio
  in-process-runtime  the same with the network in the runtime the archive's spec names (services.runtime)
  torchserve     direct TorchServe gRPC Predictions (the organ server alone)
  gateway-grpc   medseg.v1 Segment (gateway: header check, TorchServe, 7 masks, one object write, DB row)
  gateway-http   POST /api/v1/segment (the same plus multipart, base64 JSON, uvicorn)
Each gets p50/p95 at concurrency 1 after a warm-up, and images/s with `--concurrency` callers in flight.
When the HTTP path misses its target (or with --breakdown), a breakdown of the gateway's segment work
follows, measured by running the gateway's own DataPlane.segment in this process with timers around its
collaborators: once answering all seven masks (the default) and once answering none (`masks=none`).

Each row also gets the model's GFLOP/s at its p50 (the card's GFLOP per pass, scaled to the input and
times the passes) against sgemm's GFLOP/s (torch.mm of 2048² f32 on the server's threads), measured in the
same run; a runtime computing in bfloat16 is also set against a bfloat16 GEMM's rate (the arithmetic it
does runs about twice as fast as f32 where the CPU has it, so the f32 yardstick flatters it). The table is
printed as markdown and written as JSON under .medseg/bench/.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from common.settings import Settings
from services.spec import load_recipe, organ_dirs

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = load_recipe("liver").data.train / "000.png"  # a slice of the liver training data
DEFAULT_IMAGES = {
    "liver": DEFAULT_IMAGE,
    "cells": load_recipe("cells").data.train / "images" / "TCGA-18-5592-01Z-00-DX1.png",  # a 1000² tile
}
RESULTS_DIR = REPO_ROOT / ".medseg" / "bench"
ORGAN = "liver"  # the organ being benched: main() sets it from --organ
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MASK_COUNT = 7  # thresholds 0.2 … 0.8

# The targets on this 2-core machine, and what the original system reported.
HTTP_P50_TARGET_MS = 150.0
HTTP_RATIO_TARGET = 1.2
CELLS_TILE_TARGET_MS = 2000.0  # a 1000² tile with its mirror images, end to end over HTTP (issue 16)
SGEMM_SHARE_TARGET = 0.6  # the model's GFLOP/s against f32 matrix multiplication's on the same threads
ORIGINAL_MS_PER_IMAGE = 340.0

BASELINE = "in-process"  # the organ handler's work in this process, TorchScript network
RUNTIME_PATH = "in-process-runtime"  # the same with the network in the organ spec's runtime
PATHS = (BASELINE, RUNTIME_PATH, "torchserve", "gateway-grpc", "gateway-http")


# --- measuring ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathResult:
    """One path's numbers: latency at concurrency 1, throughput with `concurrency` callers in flight."""

    path: str
    requests: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    concurrency: int
    burst_requests: int
    images_per_s: float
    p50_ms_concurrent: float
    cpu_ms_per_image: dict[str, float] = field(default_factory=dict)  # by process, during the burst


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sample."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000.0


CpuProbe = Callable[[], dict[str, float]]  # CPU seconds used so far, by process (group) name


def _burst(
    path: str, call: Callable[[], object], concurrency: int, burst_requests: int, cpu: CpuProbe | None
) -> tuple[float, float, dict[str, float]]:
    """(images/s, p50 ms, CPU ms per image by process) of `burst_requests` calls from `concurrency`
    threads."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"bench-{path}") as pool:
        # one untimed call per thread first, so connection set-up is not counted as throughput
        list(pool.map(lambda _: call(), range(concurrency)))
        cpu_before = cpu() if cpu else {}
        start = time.perf_counter()
        latencies = list(pool.map(lambda _: _timed(call), range(burst_requests)))
        wall = time.perf_counter() - start
        cpu_after = cpu() if cpu else {}
    cpu_ms = {
        name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000.0 / burst_requests, 1)
        for name in cpu_after
    }
    return burst_requests / wall, percentile(latencies, 50), cpu_ms


def measure_paths(
    callers: dict[str, Callable[[], object]],
    *,
    requests: int = 30,
    concurrency: int = 8,
    burst_requests: int = 48,
    warmup: int = 3,
    cpu: CpuProbe | None = None,
) -> list[PathResult]:
    """Time each caller (one image per call; it raises on a wrong answer).

    Concurrency 1: after `warmup` untimed calls each, `requests` rounds that call every path once in turn,
    so the load of a shared machine drifting during the run falls on all paths alike. Then, path by path,
    `burst_requests` calls from `concurrency` threads give images/s, and with `cpu` the CPU time each
    process spent per image during the burst (independent of how busy the machine is).
    """
    if requests < 1 or concurrency < 1 or burst_requests < 1:
        raise ValueError("requests, concurrency and burst_requests must be at least 1")
    for call in callers.values():
        for _ in range(warmup):
            call()
    serial: dict[str, list[float]] = {path: [] for path in callers}
    for _ in range(requests):
        for path, call in callers.items():
            serial[path].append(_timed(call))
    results = []
    for path, call in callers.items():
        logger.info("measuring %s at concurrency %d", path, concurrency)
        images_per_s, p50_concurrent, cpu_ms = _burst(path, call, concurrency, burst_requests, cpu)
        samples = serial[path]
        results.append(
            PathResult(
                path=path,
                requests=requests,
                p50_ms=round(percentile(samples, 50), 1),
                p95_ms=round(percentile(samples, 95), 1),
                mean_ms=round(statistics.fmean(samples), 1),
                concurrency=concurrency,
                burst_requests=burst_requests,
                images_per_s=round(images_per_s, 2),
                p50_ms_concurrent=round(p50_concurrent, 1),
                cpu_ms_per_image=cpu_ms,
            )
        )
    return results


def table_rows(results: list[PathResult], baseline: str = BASELINE) -> list[dict]:
    """One dict per path with its p50 ratio to the baseline path (None when the baseline is missing)."""
    base = next((r for r in results if r.path == baseline), None)
    rows = []
    for r in results:
        row = asdict(r)
        row["ratio_p50"] = round(r.p50_ms / base.p50_ms, 2) if base and base.p50_ms > 0 else None
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's HTTP targets, checked against the rows (None when the HTTP path was not measured)."""
    http = next((r for r in rows if r["path"] == "gateway-http"), None)
    return {
        "http_p50_target_ms": HTTP_P50_TARGET_MS,
        "http_ratio_target": HTTP_RATIO_TARGET,
        "original_ms_per_image": ORIGINAL_MS_PER_IMAGE,
        "http_p50_ms": http["p50_ms"] if http else None,
        "http_ratio": http["ratio_p50"] if http else None,
        "http_p50_met": http["p50_ms"] <= HTTP_P50_TARGET_MS if http else None,
        "http_ratio_met": (
            http["ratio_p50"] is not None and http["ratio_p50"] <= HTTP_RATIO_TARGET if http else None
        ),
    }


def markdown_table(rows: list[dict]) -> str:
    concurrency = rows[0]["concurrency"] if rows else 0
    lines = [
        f"| path | p50 ms (c=1) | p95 ms (c=1) | p50 ratio to {BASELINE} | images/s (c={concurrency}) "
        f"| p50 ms (c={concurrency}) | model GFLOP/s at p50 | of sgemm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ratio_p50']:.2f}×" if r["ratio_p50"] is not None else "–"
        gflops = f"{r['model_gflops']:.1f}" if r.get("model_gflops") is not None else "–"
        share = f"{100 * r['share_of_sgemm']:.0f}%" if r.get("share_of_sgemm") is not None else "–"
        lines.append(
            f"| {r['path']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {ratio} | {r['images_per_s']:.1f} "
            f"| {r['p50_ms_concurrent']:.1f} | {gflops} | {share} |"
        )
    return "\n".join(lines)


def machine_facts(server_torch_threads: int | None) -> dict:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_threads_in_process": torch.get_num_threads(),
        "torch_interop_threads_in_process": torch.get_num_interop_threads(),
        "torch_threads_torchserve": server_torch_threads,
        "python": platform.python_version(),
    }


def process_group_cpu_seconds(pgid: int) -> dict[str, float]:
    """User + system CPU seconds of the live processes in process group `pgid` (Linux /proc), by command
    name (TorchServe's group holds its Java frontend and its Python workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            comm, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields[2] = pgrp; utime and stime are fields 14 and 15 of stat
            totals[comm] = totals.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def cpu_probe(groups: dict[str, int]) -> CpuProbe:
    """CPU seconds so far of this process ("bench": in-process model and every client) and of each named
    process group (each server the bench starts runs in a session of its own); TorchServe's split into its
    Java frontend and its Python worker."""

    def probe() -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {"bench": usage.ru_utime + usage.ru_stime}
        for name, pgid in groups.items():
            by_comm = process_group_cpu_seconds(pgid)
            if name == "torchserve":
                out["torchserve java"] = by_comm.get("java", 0.0)
                out["torchserve worker"] = sum(v for comm, v in by_comm.items() if comm != "java")
            else:
                out[name] = sum(by_comm.values())
        return out

    return probe


# --- the model ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelChoice:
    mar: Path
    description: str
    card: Path | None = None


def choose_model(model_store: Path, work_dir: Path) -> ModelChoice:
    """model-store/<ORGAN>.mar (copied, so a model published mid-run does not change under us), else a .mar
    of an untrained ERU-Net built now (3-D for a 3-D organ)."""
    shipped = model_store / f"{ORGAN}.mar"
    if shipped.is_file():
        mar = work_dir / shipped.name
        shutil.copyfile(shipped, mar)
        card = model_store / f"{ORGAN}.json"
        copied_card = None
        if card.is_file():
            copied_card = work_dir / card.name
            shutil.copyfile(card, copied_card)
        return ModelChoice(mar, f"trained model {shipped} ({_manifest_version(mar)})", copied_card)
    from services.spec import load_organ_spec

    arch = "eru_net_3d" if load_organ_spec(ORGAN).volumetric else "erunet widths=(12, 24, 48)"
    return ModelChoice(build_untrained_mar(work_dir), f"UNTRAINED {arch}, built on the fly")


def build_untrained_mar(out_dir: Path) -> Path:
    import torch

    from services.networks import create_model
    from services.spec import load_organ_spec
    from trainer.package import build_mar

    spec = load_organ_spec(ORGAN)
    torch.manual_seed(0)
    if spec.volumetric:  # a logit per class, background + labels; it runs TorchScript (the spec's runtime)
        net = create_model("eru_net_3d", in_channels=spec.channels, out_channels=len(spec.labels) + 1).eval()
    else:
        net = create_model("erunet", in_channels=spec.channels, widths=(12, 24, 48)).eval()
    scripted = out_dir / "untrained.pt"
    torch.jit.script(net).save(str(scripted))
    try:
        return build_mar(scripted, ORGAN, spec, out_dir, ORGAN, "untrained", onnx=not spec.volumetric)
    finally:
        scripted.unlink(missing_ok=True)


def _manifest_version(mar: Path) -> str:
    with zipfile.ZipFile(mar) as archive:
        model = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
    return f"{model.get('modelName')} version {model.get('modelVersion')}"


def mar_handler_settings(mar: Path) -> dict:
    """The `handler:` block of the model-config.yaml packed in the .mar (torch threads, ...)."""
    import yaml

    with zipfile.ZipFile(mar) as archive:
        names = [n for n in archive.namelist() if n.endswith("model-config.yaml")]
        if not names:
            return {}
        return (yaml.safe_load(archive.read(names[0])) or {}).get("handler") or {}


class InProcessSegmenter:
    """The organ handler's pipeline in this process, with the network and spec from the .mar: decode →
    prepare → services.preprocess.probabilities (mirror images where the spec says, batched as the handler
    batches them) → restore → PNG, the network in `runtime` (services.runtime; "spec": the one the packed
    spec names, TorchScript when the archive has no model.onnx)."""

    def __init__(
        self,
        mar: Path,
        work_dir: Path,
        torch_threads: int | None = None,
        runtime: str = "torchscript",
        runtime_threads: int | None = None,
    ):
        import torch

        from services.runtime import INT8_FILE, ONNX_FILE, build, load_runtime
        from services.spec import load_spec

        work_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(mar) as archive:
            for name in ("model.pt", "spec.yaml", ONNX_FILE, INT8_FILE):
                if name in archive.namelist():
                    archive.extract(name, work_dir)
        self.spec = load_spec(work_dir / "spec.yaml")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))  # as the organ server's handler does
        threads = int(runtime_threads or torch.get_num_threads())  # the handler's runtime_threads
        if runtime == "spec":
            loaded = load_runtime(self.spec.runtime, work_dir, threads)
            self.model, self.runtime = loaded.model, loaded.name
        else:
            self.model, self.runtime = build(runtime, work_dir, threads), runtime
        self._lock = threading.Lock()  # one forward at a time, like TorchServe's single worker

    def __call__(self, data: bytes) -> bytes:
        import torch

        from services.imaging import decode_image, encode_png
        from services.preprocess import BATCH_VIEWS_PIXELS, prepare, probabilities, restore

        image = decode_image(data, window=self.spec.window).array
        x, how = prepare(image, self.spec)
        with self._lock, torch.inference_mode():  # the mirror views batched as the handler batches them
            prob = restore(probabilities(self.model, x, self.spec, BATCH_VIEWS_PIXELS), how)
            grey = (prob * 255.0).round_().to(torch.uint8).numpy()
        return encode_png(grey)


def model_gflop(card: Path | None, spec, image: bytes) -> float | None:
    """GFLOP the network does for one image as served: the card's GFLOP per pass (measured at
    `inference_gflops_input`) scaled to the model input's pixels, times the passes (mirror images)."""
    if card is None or not card.is_file():
        return None
    from services.imaging import decode_image
    from services.preprocess import TTA_FLIPS, prepare
    from tools.runtime_bench import gflop_per_input

    x, _ = prepare(decode_image(image, window=spec.window).array, spec)
    per_pass = gflop_per_input(json.loads(card.read_text()), tuple(x.shape[-2:]))
    return per_pass * len(TTA_FLIPS[spec.inference.tta])


# besides sgemm, the GEMM a runtime computing in another precision is judged against
REDUCED_GEMM = {"openvino-bf16": "bfloat16"}


def runtime_gemm(rows: list[dict], dtype: str | None, gflops: float | None) -> dict | None:
    """The in-process runtime's model GFLOP/s as a share of a GEMM in its own arithmetic (None for f32)."""
    row = next((r for r in rows if r["path"] == RUNTIME_PATH), None)
    if dtype is None or gflops is None or row is None or row.get("model_gflops") is None:
        return None
    return {"dtype": dtype, "gflops": round(gflops, 1), "share": round(row["model_gflops"] / gflops, 3)}


def compute_rates(rows: list[dict], gflop: float | None, sgemm: float) -> None:
    """Add to each row the model's GFLOP/s at its p50 and that as a share of sgemm's GFLOP/s (in place)."""
    for row in rows:
        if gflop is None or not row["p50_ms"]:
            row["model_gflops"] = row["share_of_sgemm"] = None
            continue
        row["model_gflops"] = round(gflop / (row["p50_ms"] / 1000), 1)
        row["share_of_sgemm"] = round(row["model_gflops"] / sgemm, 3)


# --- the stack ----------------------------------------------------------------------------------------
@dataclass
class Stack:
    state_dir: Path
    model_store: Path
    s3_endpoint: str
    torchserve_address: str
    torchserve_key: str
    http_url: str
    grpc_address: str
    api_key: str
    gateway_env: dict = field(default_factory=dict)
    gateway_log: Path | None = None
    process_groups: dict[str, int] = field(default_factory=dict)  # name → pgid, for CPU accounting


@contextlib.contextmanager
def running_stack(state_dir: Path, choice: ModelChoice) -> Iterator[Stack]:
    """Object store, the organ's TorchServe and gateway on free ports under `state_dir`; all stopped on
    exit."""
    from common.launcher import OrganServer, free_port, free_ports
    from gateway.core.db import make_engine, run_migrations, session_scope
    from gateway.security import create_api_key
    from tools.objectstore_server import ObjectStoreServer, free_objectstore_ports

    model_store = state_dir / "model-store"
    model_store.mkdir(parents=True)
    shutil.copyfile(choice.mar, model_store / f"{ORGAN}.mar")
    if choice.card is not None:
        shutil.copyfile(choice.card, model_store / f"{ORGAN}.json")

    with contextlib.ExitStack() as cleanup:
        store = ObjectStoreServer(state_dir, free_objectstore_ports())
        print(f"starting object store on {store.endpoint} …", flush=True)
        store.start(timeout=60)
        cleanup.callback(store.stop)

        organ = OrganServer(ORGAN, state_dir, model_store, models={ORGAN: f"{ORGAN}.mar"}, ports=free_ports())
        print(f"starting {ORGAN} TorchServe on {organ.grpc_inference_address} …", flush=True)
        cleanup.callback(organ.stop)  # before start(): a failed start stops itself, stop() is idempotent
        organ.start(timeout=300)

        db_url = f"sqlite:///{state_dir / 'medseg.db'}"
        run_migrations(db_url)
        engine = make_engine(db_url)
        with session_scope(engine) as session:
            api_key = create_api_key(session, "bench", "segment", actor="bench")[1]
        engine.dispose()

        http_port, grpc_port = free_port(), free_port()
        settings = Settings.model_construct(  # these settings only, not this process's MEDSEG_* environment
            state_dir=state_dir,
            model_store_dir=model_store,
            database_url=db_url,
            s3_endpoint=store.endpoint,
            http_port=http_port,
            grpc_port=grpc_port,
            # the other organs are not started: point them at a port nobody listens on, never someone else's
            organ_addresses={
                **{other: f"127.0.0.1:{free_port()}" for other in organ_dirs()},
                ORGAN: organ.grpc_inference_address,
            },
            inference_timeout_s=60.0,  # the machine is shared with training runs
        )
        log_path = state_dir / "logs" / "gateway.log"
        print(f"starting gateway on {gateway_http_url(settings)} and 127.0.0.1:{grpc_port} …", flush=True)
        gateway = start_gateway(settings, log_path)
        cleanup.callback(stop_gateway, gateway)
        wait_gateway_ready(gateway, settings, log_path, required=(f"organ:{ORGAN}", "objectstore"))
        env = settings_env(settings)
        http_url = gateway_http_url(settings)
        yield Stack(
            state_dir=state_dir,
            model_store=model_store,
            s3_endpoint=store.endpoint,
            torchserve_address=organ.grpc_inference_address,
            torchserve_key=organ.keys.inference,
            http_url=http_url,
            grpc_address=f"127.0.0.1:{grpc_port}",
            api_key=api_key,
            gateway_env=env,
            gateway_log=log_path,
            process_groups={
                "gateway": gateway.pid,
                "torchserve": organ.pid,
                "objectstore": store.running_pid(),
            },
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment without MEDSEG_* variables, plus `settings` as MEDSEG_* variables, so a
    `medseg serve` child reads exactly these settings (dicts as JSON, as pydantic-settings parses them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSEG_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, (dict, list, bool)):
            value = json.dumps(value)
        env[f"MEDSEG_{name.upper()}"] = str(value)
    return env


def gateway_http_url(settings: Settings) -> str:
    return f"http://{settings.http_host}:{settings.http_port}"


def start_gateway(settings: Settings, log_path: Path) -> subprocess.Popen:
    """`medseg serve` (HTTP + gRPC) as a child in a session of its own (its pid is its process group),
    configured by `settings` only; output appended to `log_path`. Pair with stop_gateway."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "common.cli", "serve"],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_gateway(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the gateway we started (its own process group), SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("gateway (pid %d) ignored SIGTERM; killing it", proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_gateway_ready(
    proc: subprocess.Popen,
    settings: Settings,
    log_path: Path,
    required: tuple[str, ...] | None = None,
    timeout: float = 120.0,
) -> dict:
    """Until /readyz reports every `required` component ok (None: all of them); returns the components."""
    import httpx

    url = f"{gateway_http_url(settings)}/readyz"
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {proc.returncode}; see {log_path}")
        try:
            components = httpx.get(url, timeout=5.0).json().get("components", {})
            wanted = required if required is not None else tuple(components)
            if components and all(components.get(name) == "ok" for name in wanted):
                return components
            last = json.dumps(components)
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"gateway not ready after {timeout:.0f}s (last: {last}); see {log_path}")


# --- the four callers -------------------------------------------------------------------------------
def _check_png(body: bytes, what: str) -> None:
    if not body.startswith(PNG_MAGIC):
        raise RuntimeError(f"{what} did not return a PNG ({body[:80]!r})")


def _check_masks(
    count: int, width: int, height: int, what: str, expected: tuple[int, int] = (512, 512)
) -> None:
    if count != MASK_COUNT or (width, height) != tuple(expected):
        raise RuntimeError(
            f"{what} returned {count} masks at {width}x{height}; expected 7 at {expected[0]}x{expected[1]}"
        )


def _image_size(image: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        return im.size


def torchserve_caller(stack: Stack, image: bytes) -> tuple[Callable[[], object], Callable[[], None]]:
    from common.torchserve_client import InferenceClient

    client = InferenceClient(stack.torchserve_address, stack.torchserve_key, timeout=60)

    def call() -> None:
        _check_png(client.predict(ORGAN, image), "TorchServe")

    return call, client.close


def gateway_grpc_caller(stack: Stack, image: bytes) -> tuple[Callable[[], object], Callable[[], None]]:
    size = _image_size(image)
    import grpc
    from medseg.v1 import segmentation_pb2 as pb
    from medseg.v1 import segmentation_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(
        stack.grpc_address,
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    stub = pb_grpc.SegmentationStub(channel)
    request = pb.SegmentRequest(organ=ORGAN, image=image, filename="slice.png")
    metadata = (("authorization", f"Bearer {stack.api_key}"),)

    def call() -> None:
        reply = stub.Segment(request, timeout=120, metadata=metadata)
        _check_masks(len(reply.masks), reply.width, reply.height, "gateway gRPC", size)

    return call, channel.close


def gateway_http_caller(stack: Stack, image: bytes) -> tuple[Callable[[], object], Callable[[], None]]:
    size = _image_size(image)
    import httpx

    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        # one keep-alive connection per calling thread, as a hospital system's worker would hold
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=stack.http_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=120
            )
            with lock:
                clients.append(local.client)
        return local.client

    def call() -> None:
        response = client().post(
            "/api/v1/segment", data={"organ": ORGAN}, files={"file": ("slice.png", image, "image/png")}
        )
        if response.status_code != 200:
            raise RuntimeError(f"gateway HTTP answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        _check_masks(len(body["masks"]), body["width"], body["height"], "gateway HTTP", size)
        _check_png(base64.b64decode(body["probability_png"]), "gateway HTTP")

    def close() -> None:
        for c in clients:
            c.close()

    return call, close


# --- where the time goes on the gateway's segment path --------------------------------------------
@contextlib.contextmanager
def _timing(obj, attr: str, bucket: str, totals: dict[str, float]) -> Iterator[None]:
    """Wrap `obj.attr` so its wall time adds up in totals[bucket]; the original is restored on exit."""
    original = getattr(obj, attr)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[bucket] = totals.get(bucket, 0.0) + (time.perf_counter() - start) * 1000.0

    setattr(obj, attr, timed)
    try:
        yield
    finally:
        setattr(obj, attr, original)


# CPU this process spends in the key check and DataPlane.segment, all its threads (the writer pool's too): the
# gateway's own work, whose figure a busy machine stretches far less than wall time. It includes the client
# side of the TorchServe call (gRPC), none of TorchServe's work.
CPU_ROW = "CPU ms of key check + segment (this process, all threads)"


def segment_breakdown(
    stack: Stack, image: bytes, runs: int = 15, masks: tuple[float, ...] | None = None
) -> dict[str, float]:
    """Median ms per part of DataPlane.segment, run in this process against the bench's own stack (same
    object store, organ server and database as the gateway), one request at a time, answering the masks at
    `masks` (None: all seven, the default). The object write runs beside the map's decoding and the mask
    encoding, so the parts overlap."""
    from common.settings import Settings
    from gateway.core.db import make_engine, session_scope
    from gateway.resources.segmentations.schemas import SegmentationPublic
    from gateway.security import authorize
    from gateway.service import build_dataplane, images
    from gateway.service import dataplane as dataplane_module

    env = stack.gateway_env
    settings = Settings(
        state_dir=Path(env["MEDSEG_STATE_DIR"]),
        model_store_dir=Path(env["MEDSEG_MODEL_STORE_DIR"]),
        database_url=env["MEDSEG_DATABASE_URL"],
        s3_endpoint=env["MEDSEG_S3_ENDPOINT"],
        organ_addresses=json.loads(env["MEDSEG_ORGAN_ADDRESSES"]),
        inference_timeout_s=60.0,
    )
    dataplane = build_dataplane(settings)
    engine = make_engine(settings.sqlalchemy_url)
    thresholds = dataplane_module.THRESHOLDS if masks is None else masks
    parts = {
        "check upload (header)": (images, "inspect"),
        "TorchServe call": (dataplane.clients[ORGAN], "predict"),
        "decode probability PNG": (images, "decode_probability"),
        "areas at 7 thresholds (counted from the map)": (dataplane_module, "areas"),
        "threshold + encode the mask PNGs asked for": (dataplane_module, "mask_png"),
        "object store: 1 write (beside the masks)": (dataplane, "_store_probability"),
        "decode, areas, masks + the write, overlapped": (dataplane, "_store_results"),
        "database row + audit": (dataplane, "record_segmentation"),
    }
    # inside "decode, areas, masks + the write, overlapped": not added again into "other in segment"
    nested = {name for name, (obj, _) in parts.items() if obj is dataplane_module} | {
        "object store: 1 write (beside the masks)",
        "decode probability PNG",
    }
    samples: dict[str, list[float]] = {name: [] for name in parts}
    samples.update({"other in segment": [], "segment total": [], "API key check": []})
    samples["response JSON (base64)"] = []
    samples[CPU_ROW] = []
    samples["gateway work besides TorchServe"] = []
    try:
        with session_scope(engine) as session:
            dataplane.segment(session, ORGAN, image, "slice.png")  # warm-up; creates buckets once
        for _ in range(runs):
            totals: dict[str, float] = {}
            with contextlib.ExitStack() as patches:
                for name, (obj, attr) in parts.items():
                    patches.enter_context(_timing(obj, attr, name, totals))
                with session_scope(engine) as session:
                    cpu = time.process_time()
                    start = time.perf_counter()
                    key = authorize(session, f"Bearer {stack.api_key}", ("segment",))
                    samples["API key check"].append((time.perf_counter() - start) * 1000.0)
                    start = time.perf_counter()
                    result = dataplane.segment(
                        session, ORGAN, image, "slice.png", api_key_id=key.id, masks=thresholds
                    )
                    samples["segment total"].append((time.perf_counter() - start) * 1000.0)
                    samples[CPU_ROW].append((time.process_time() - cpu) * 1000.0)
            start = time.perf_counter()
            SegmentationPublic.of(result).model_dump_json()
            samples["response JSON (base64)"].append((time.perf_counter() - start) * 1000.0)
            for name in parts:
                samples[name].append(totals.get(name, 0.0))
            outer = sum(ms for name, ms in totals.items() if name not in nested)
            samples["other in segment"].append(samples["segment total"][-1] - outer)
            samples["gateway work besides TorchServe"].append(
                samples["segment total"][-1]
                + samples["API key check"][-1]
                - totals.get("TorchServe call", 0.0)
            )
    finally:
        dataplane.close()
        engine.dispose()
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


# --- main ---------------------------------------------------------------------------------------------
def run_breakdown_only(args: argparse.Namespace) -> dict:
    """The stack and the segment breakdowns only (all masks, then none), without timing the five paths."""
    image = Path(args.image).read_bytes()
    tmp_root = Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        (tmp_root / "work").mkdir()
        choice = choose_model(Path(args.model_store), tmp_root / "work")
        load_before = round(os.getloadavg()[0], 2)
        with running_stack(tmp_root / "state", choice) as stack:
            print("measuring where the gateway's time goes (all masks, then none) …", flush=True)
            breakdown = segment_breakdown(stack, image)
            breakdown_no_masks = segment_breakdown(stack, image, masks=())
        return {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "image": args.image,
            "model": choice.description,
            "load_average_1m": [load_before, round(os.getloadavg()[0], 2)],
            "http_breakdown_ms": breakdown,
            "http_breakdown_ms_no_masks": breakdown_no_masks,
        }
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def run(args: argparse.Namespace) -> dict:
    image_path = Path(args.image)
    if not image_path.is_file():
        raise SystemExit(f"{image_path} not found: pass --image, a {ORGAN} image (PNG)")
    image = image_path.read_bytes()
    tmp_root = Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        work = tmp_root / "work"
        work.mkdir()
        choice = choose_model(Path(args.model_store), work)
        print(f"model: {choice.description}", flush=True)
        handler_settings = mar_handler_settings(choice.mar)
        server_threads = handler_settings.get("torch_threads")
        in_process = InProcessSegmenter(choice.mar, work / "torchscript", server_threads)
        in_runtime = InProcessSegmenter(
            choice.mar,
            work / "runtime",
            server_threads,
            runtime="spec",
            runtime_threads=handler_settings.get("runtime_threads"),
        )
        print(f"in-process runtime: {in_runtime.runtime} (the archive's spec: {in_runtime.spec.runtime})")
        from tools.runtime_bench import sgemm_gflops

        sgemm_before = sgemm_gflops()  # this process's torch threads: the organ server's
        reduced = REDUCED_GEMM.get(in_runtime.runtime)
        reduced_before = sgemm_gflops(dtype=reduced) if reduced is not None else None
        load_before = round(os.getloadavg()[0], 2)
        with running_stack(tmp_root / "state", choice) as stack:
            callers = {
                BASELINE: lambda: _check_png(in_process(image), BASELINE),
                RUNTIME_PATH: lambda: _check_png(in_runtime(image), RUNTIME_PATH),
            }
            closers = []
            try:
                for path, make_caller in (
                    ("torchserve", torchserve_caller),
                    ("gateway-grpc", gateway_grpc_caller),
                    ("gateway-http", gateway_http_caller),
                ):
                    callers[path], close = make_caller(stack, image)
                    closers.append(close)
                print(
                    f"measuring {', '.join(callers)}: {args.requests} interleaved rounds at concurrency 1, "
                    f"then {args.burst} requests each at concurrency {args.concurrency} …",
                    flush=True,
                )
                results = measure_paths(
                    callers,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    burst_requests=args.burst,
                    cpu=cpu_probe(stack.process_groups),
                )
            finally:
                for close in closers:
                    close()
            rows = table_rows(results)
            sgemm = max(sgemm_before, sgemm_gflops())
            reduced_gemm = max(reduced_before, sgemm_gflops(dtype=reduced)) if reduced is not None else None
            gflop = model_gflop(choice.card, in_process.spec, image)
            compute_rates(rows, gflop, sgemm)
            checked = targets(rows)
            handler = torchserve_handler_ms(stack.state_dir)
            breakdown = breakdown_no_masks = None
            runs = None
            if args.breakdown or (
                ORGAN == "liver" and not (checked["http_p50_met"] and checked["http_ratio_met"])
            ):
                print("measuring where the gateway's time goes (all masks, then none) …", flush=True)
                runs = min(15, max(3, args.requests))  # a cells tile's organ call takes seconds
                breakdown = segment_breakdown(stack, image, runs=runs)
                breakdown_no_masks = segment_breakdown(stack, image, runs=runs, masks=())
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "image": str(image_path),
            "image_bytes": len(image),
            "organ": ORGAN,
            "model": choice.description,
            "runtime": in_runtime.runtime,
            "model_gflop_per_image": gflop,
            "sgemm_gflops": round(sgemm, 1),
            "runtime_gemm": runtime_gemm(rows, reduced, reduced_gemm),
            "machine": {
                **machine_facts(server_threads),
                "load_average_1m_before": load_before,
                "note": "2 cores shared with other work (training runs): numbers are pessimistic",
            },
            "rows": rows,
            "targets": checked,
            "http_breakdown_ms": breakdown,
            "http_breakdown_ms_no_masks": breakdown_no_masks,
            "http_breakdown_runs": runs,
            "torchserve_handler_ms": handler,
        }
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return report


# e.g. "HandlerTime.ms:70.46|#ModelName:liver,Level:Model|#hostname:vm,requestID:<id>[,<id>…],timestamp:…"
HANDLER_TIME = re.compile(r"HandlerTime\.ms:([0-9.]+)\|.*requestID:(.*?)(?:,timestamp:.*)?$")


def torchserve_handler_ms(state_dir: Path) -> dict | None:
    """TorchServe's own record of the handler's time inside the worker (model_metrics.log), over the calls
    that were batches of one image: {"median", "calls"}; None when the log has none."""
    times = []
    for log in state_dir.glob("torchserve/*/logs/model_metrics.log"):
        for line in log.read_text(errors="replace").splitlines():
            found = HANDLER_TIME.search(line)
            if found and "," not in found.group(2):  # one request ID: a batch of one
                times.append(float(found.group(1)))
    return {"median": statistics.median(times), "calls": len(times)} if times else None


def print_report(report: dict) -> None:
    m, t = report["machine"], report["targets"]
    print()
    print(f"## MedSeg bench — one {report['image']} ({report['image_bytes']} bytes), organ {report['organ']}")
    print(f"model: {report['model']}; {RUNTIME_PATH}: {report['runtime']}")
    if report.get("model_gflop_per_image"):
        print(
            f"model work: {report['model_gflop_per_image']:.2f} GFLOP per image as served; sgemm (torch.mm "
            f"2048² f32, this process's threads, best of 5 before and after): "
            f"{report['sgemm_gflops']} GFLOP/s"
        )
    print(
        f"machine: {m['usable_cores']} usable cores (cpu_count {m['cpu_count']}), torch {m['torch']}, "
        f"torch threads in-process {m['torch_threads_in_process']} (interop "
        f"{m['torch_interop_threads_in_process']}), TorchServe handler torch_threads "
        f"{m['torch_threads_torchserve']}; 1-min load average {m['load_average_1m_before']} before, "
        f"{m['load_average_1m']} after — {m['note']}"
    )
    print()
    print(markdown_table(report["rows"]))
    print()

    def verdict(met) -> str:
        return "n/a" if met is None else ("MET" if met else "MISSED")

    by_path = {r["path"]: r for r in report["rows"]}
    runtime_row = by_path.get(RUNTIME_PATH)
    http_row = by_path.get("gateway-http")
    if runtime_row and runtime_row.get("share_of_sgemm") is not None:
        tile = (
            f"; cells tile over HTTP ≤ {CELLS_TILE_TARGET_MS:.0f} ms → {http_row['p50_ms']:.0f} ms "
            f"{verdict(http_row['p50_ms'] <= CELLS_TILE_TARGET_MS)}"
            if report["organ"] == "cells" and http_row
            else ""
        )
        own = report.get("runtime_gemm")
        own = (
            f" (against a {own['dtype']} GEMM, {own['gflops']} GFLOP/s, the arithmetic it computes in: "
            f"{100 * own['share']:.0f}%)"
            if own
            else ""
        )
        print(
            f"targets ({report['runtime']} in-process): model compute ≥ {100 * SGEMM_SHARE_TARGET:.0f}% of "
            f"sgemm → {100 * runtime_row['share_of_sgemm']:.0f}% "
            f"{verdict(runtime_row['share_of_sgemm'] >= SGEMM_SHARE_TARGET)}{own}{tile}"
        )
    if report["organ"] == "liver":  # the slice targets; a cells tile's is above
        print(
            f"targets: HTTP p50 ≤ {t['http_p50_target_ms']:.0f} ms → {t['http_p50_ms']} ms "
            f"{verdict(t['http_p50_met'])}; HTTP ≤ {t['http_ratio_target']}× in-process → "
            f"{t['http_ratio']}× {verdict(t['http_ratio_met'])}; original system: "
            f"{t['original_ms_per_image']:.0f} ms/image"
        )
    if {"torchserve", "gateway-grpc", "gateway-http"} <= set(by_path):
        ts, grpc_, http = (by_path[p]["p50_ms"] for p in ("torchserve", "gateway-grpc", "gateway-http"))
        print(
            f"gateway over TorchServe (p50, interleaved): gRPC +{grpc_ - ts:.1f} ms, HTTP +{http - ts:.1f} ms"
        )
    handler = report.get("torchserve_handler_ms")
    if handler and "torchserve" in by_path:
        hop = by_path["torchserve"]["p50_ms"] - handler["median"]
        print(
            f"TorchServe's own HandlerTime (inside its worker, batches of one image): median "
            f"{handler['median']:.1f} ms over {handler['calls']} calls; the direct TorchServe path's p50 is "
            f"{hop:+.1f} ms more (gRPC, the Java frontend, the worker protocol)"
        )
    if any(r["cpu_ms_per_image"] for r in report["rows"]):
        names = sorted({n for r in report["rows"] for n in r["cpu_ms_per_image"]})
        print()
        print("CPU ms per image during the concurrent burst, by process (does not depend on the load):")
        print()
        print("| path | " + " | ".join(names) + " | total |")
        print("|---|" + "---:|" * (len(names) + 1))
        for r in report["rows"]:
            cpu = r["cpu_ms_per_image"]
            cells = " | ".join(f"{cpu.get(n, 0.0):.1f}" for n in names)
            print(f"| {r['path']} | {cells} | {sum(cpu.values()):.1f} |")
        print("(bench = this process: the in-process model, and the client side of every other path)")
    if report["http_breakdown_ms"]:
        print()
        print(
            "where the time goes (the gateway's DataPlane.segment run in the bench process against the same "
            f"stack, median ms of {report.get('http_breakdown_runs') or 15} sequential runs; the parts are "
            "medians, so they need not add up):"
        )
        print()
        print(breakdown_table(report["http_breakdown_ms"], report.get("http_breakdown_ms_no_masks")))


def breakdown_table(all_masks: dict[str, float], no_masks: dict[str, float] | None) -> str:
    """The breakdown as markdown: one column answering all seven masks, one answering none (when measured);
    a part only one of them has (the mask encoding) is blank in the other."""
    columns = [("all 7 masks", all_masks)] + ([("masks=none", no_masks)] if no_masks else [])
    names = list(dict.fromkeys(name for _, values in columns for name in values))
    names.remove("gateway work besides TorchServe")
    lines = ["| part | " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in names:
        cells = (f"{values[name]:.1f}" if name in values else "" for _, values in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    besides = " | ".join(f"**{values['gateway work besides TorchServe']:.1f}**" for _, values in columns)
    lines.append(f"| gateway work besides the TorchServe call (key check included) | {besides} |")
    return "\n".join(lines)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """SIGTERM (e.g. make interrupted) unwinds like Ctrl-C, so the stack's cleanup still runs."""
    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per path (c=1)")
    parser.add_argument("--concurrency", type=int, default=8, help="callers in flight for images/s")
    parser.add_argument("--burst", type=int, default=48, help="requests per path at --concurrency")
    parser.add_argument("--organ", default="liver", choices=sorted(DEFAULT_IMAGES))
    parser.add_argument("--image", help="the image to segment (default: a liver slice / a cells tile)")
    parser.add_argument("--breakdown", action="store_true", help="time the segment parts even if on target")
    parser.add_argument(
        "--breakdown-only",
        action="store_true",
        help="start the stack and time only the gateway's segment parts (liver), not the five paths",
    )
    parser.add_argument(
        "--model-store",
        default=str(REPO_ROOT / "model-store"),
        help="where liver.mar (and its card) come from, e.g. the same model packed with other settings",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="directory for the JSON result")
    args = parser.parse_args(argv)
    global ORGAN
    ORGAN = args.organ
    args.image = args.image or str(DEFAULT_IMAGES[args.organ])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unwind_on_sigterm()
    if args.breakdown_only:
        report = run_breakdown_only(args)
        print(f"\nbreakdown only, load {report['load_average_1m']} (1-min average before, after):\n")
        print(breakdown_table(report["http_breakdown_ms"], report["http_breakdown_ms_no_masks"]))
    else:
        report = run(args)
        print_report(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
