"""The network alone in each runtime: slices/s by batch size, and GFLOP/s against the machine's sgemm.

    .venv/bin/python -m tools.runtime_bench [--organ liver] [--batches 1 4 8 16] [--runtimes ...]
                                            [--threads N] [--rounds 7]

Reads the organ's shipped archive (model-store/<organ>.mar: model.pt, and model.onnx when packed, else
exported now with trainer.export.export_onnx), runs random inputs of the model's size (liver 256², cells
1008²) at each batch size in each runtime, the runtimes and batch sizes taking turns round by round so that
a change in a shared machine's load falls on all alike, and prints a markdown table: median ms per batch,
inputs/s, ms per input, the model's achieved GFLOP/s (the card's `inference_gflops`, scaled by pixels) and
that as a share of f32 matrix multiplication's GFLOP/s measured in the same run with the same threads
(`sgemm_gflops`, torch.mm of 2048² matrices). services/<organ>/model-config.yaml batchSize comes from this.

    .venv/bin/python -m tools.runtime_bench --volume [--chunks 1 4 8 16 32] [--volume-batches 1 4 8]
                                            [--slices 64] [--rounds 3]

measures a liver volume through a real TorchServe instead (`volume_rows`): the shipped archive's networks
repacked with this checkout's handler (trainer.package.repackage) once per handler mini-batch size
(spec inference.volume_batch), all registered on one liver server, and a run of real CT slices (tools.
liver_volumes, whole Hounsfield units: int16 on the wire, as a DICOM series) segmented through common.
volume_inference.segment_volume at each chunk size (slices per request), configurations taking turns
round by round. It prints slices/s per configuration and its ratio to chunk 1 (mini-batch 1),
with the server's CPU per slice (its Java frontend and Python workers, from /proc: what a busy shared
machine disturbs least), then, at the spec's chunk and mini-batch: float32 on the wire, one request in
flight instead of two, TorchServe batching two chunk requests (batchSize 2, maxBatchDelay 20 ms), and two
workers. services/<organ>/spec.yaml inference.volume_chunk / volume_batch come from this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from common.launcher import OrganServer, free_ports
from common.torchserve_client import InferenceClient
from common.volume_inference import segment_volume
from services.runtime import build
from services.spec import SERVICES_DIR, OrganSpec, load_organ_spec
from tools.bench import process_group_cpu_seconds
from tools.liver_volumes import PATIENTS, liver_volume
from trainer.export import organ_threads, unpack_runtimes
from trainer.package import repackage

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_STORE = REPO_ROOT / "model-store"
MODEL_SIZES = {"liver": (256, 256), "cells": (1008, 1008)}  # what the network sees per served input


def sgemm_gflops(n: int = 2048, rounds: int = 5, dtype: str = "float32") -> float:
    """GFLOP/s of an n×n by n×n matrix product in `dtype` (torch.mm, torch's current threads): the best
    of `rounds`. In float32 (sgemm) the machine's attainable dense f32 rate against which a network's rate
    is judged; in "bfloat16" the yardstick of a network computed in bfloat16."""
    a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def gflop_per_input(card: dict, size: tuple[int, int]) -> float:
    """The card's GFLOP per forward pass (measured at `inference_gflops_input`) scaled to `size`: a fully
    convolutional network's cost grows with its pixels."""
    measured_at = card.get("inference_gflops_input") or [256, 256]
    return card["inference_gflops"] * (size[0] * size[1]) / (measured_at[0] * measured_at[1])


def load_models(organ: str, mar: Path, work: Path, runtimes: list[str], threads: int) -> dict:
    spec = unpack_runtimes(mar, work)
    return {name: build(name, work, threads) for name in runtimes}, spec


def time_batches(models: dict, channels: int, size, batches: list[int], rounds: int) -> dict:
    """Median seconds per batch: {(runtime, batch): seconds}, interleaved round by round."""
    inputs = {b: torch.randn(b, channels, *size, generator=torch.Generator().manual_seed(b)) for b in batches}
    samples: dict[tuple[str, int], list[float]] = {(r, b): [] for r in models for b in batches}
    with torch.inference_mode():
        for model in models.values():
            for x in inputs.values():
                model(x)  # warm-up (first-call allocations, TorchScript's profiling runs)
        for _ in range(rounds):
            for b, x in inputs.items():
                for name, model in models.items():
                    start = time.perf_counter()
                    model(x)
                    samples[(name, b)].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def rows(seconds: dict, gflop: float, sgemm: float) -> list[dict]:
    out = []
    for (runtime, batch), s in seconds.items():
        per_s = batch / s
        out.append(
            {
                "runtime": runtime,
                "batch": batch,
                "ms_per_batch": round(1000 * s, 1),
                "inputs_per_s": round(per_s, 2),
                "ms_per_input": round(1000 * s / batch, 1),
                "gflops": round(gflop * per_s, 1),
                "share_of_sgemm": round(gflop * per_s / sgemm, 3),
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| runtime | batch | ms per batch | inputs/s | ms per input | model GFLOP/s | of sgemm |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['runtime']} | {r['batch']} | {r['ms_per_batch']:.1f} | {r['inputs_per_s']:.2f} "
        f"| {r['ms_per_input']:.1f} | {r['gflops']:.1f} | {100 * r['share_of_sgemm']:.0f}% |"
        for r in table
    ]
    return "\n".join(lines)


# --- a volume through a real TorchServe ------------------------------------------------------------

VOLUME_CHUNKS = (1, 4, 8, 16, 32)
VOLUME_BATCHES = (1, 4, 8)
# model-config.yaml variants measured at the spec's chunk and mini-batch: TorchServe batching two chunk
# requests into one handler call, and two workers (each with the organ's threads) taking chunks in parallel
MODEL_CONFIG_VARIANTS = {
    "ts": ({"batchSize": 2, "maxBatchDelay": 20}, "TorchServe batchSize 2, maxBatchDelay 20 ms", 2),
    "w2": ({"minWorkers": 2, "maxWorkers": 2}, "2 TorchServe workers, 3 requests in flight", 3),
}


@dataclasses.dataclass(frozen=True)
class VolumeConfig:
    """One measured way of serving a volume: `model` (a registered archive) at `chunk` slices a request."""

    model: str
    volume_batch: int
    chunk: int
    dtype: str = "int16"
    in_flight: int = 2
    variant: str = ""  # what differs from the grid of chunk × mini-batch

    @property
    def label(self) -> str:
        return f"chunk {self.chunk}, mini-batch {self.volume_batch}" + (
            f", {self.variant}" if self.variant else ""
        )


def _services_with(work: Path, organ: str, model_config: dict) -> Path:
    """A copy of services/ (under `work`) whose organ model-config.yaml has `model_config` set."""
    copy = work / "services"
    shutil.copytree(SERVICES_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / organ / "model-config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **model_config}))
    return copy


def _with_volume_batch(spec: OrganSpec, volume_batch: int) -> OrganSpec:
    return dataclasses.replace(spec, inference=dataclasses.replace(spec.inference, volume_batch=volume_batch))


@contextlib.contextmanager
def volume_server(mar: Path, work: Path, batches: list[int], spec: OrganSpec) -> Iterator[OrganServer]:
    """One liver TorchServe with the archive's networks repacked once per handler mini-batch size (models
    `liver-b<N>`) and once per model-config variant at the spec's mini-batch (`liver-ts`, `liver-w2`)."""
    store = work / "store"
    packed = {}
    for batch in batches:
        name = f"{spec.name}-b{batch}"
        packed[name] = repackage(mar, store, name, "1", spec=_with_volume_batch(spec, batch)).name
    for key, (model_config, _, _) in MODEL_CONFIG_VARIANTS.items():
        services = _services_with(work / key, spec.name, model_config)
        name = f"{spec.name}-{key}"
        packed[name] = repackage(mar, store, name, "1", spec=spec, services_dir=services).name
    server = OrganServer(spec.name, work / "state", store, models=packed, ports=free_ports())
    server.start(timeout=600)
    try:
        yield server
    finally:
        server.stop()


def volume_configs(organ: str, chunks: list[int], batches: list[int], spec: OrganSpec) -> list[VolumeConfig]:
    """The grid chunk × mini-batch (a mini-batch larger than the chunk is the chunk's own size: left out),
    then variants at the spec's chunk and mini-batch."""
    configs = [VolumeConfig(f"{organ}-b{b}", b, c) for b in batches for c in chunks if c >= b or b == 1]
    chunk, batch = spec.inference.volume_chunk, spec.inference.volume_batch
    if batch in batches:
        model = f"{organ}-b{batch}"
        configs += [
            VolumeConfig(model, batch, chunk, dtype="float32", variant="float32 on the wire"),
            VolumeConfig(model, batch, chunk, in_flight=1, variant="1 request in flight"),
        ]
    for key, (_, variant, in_flight) in MODEL_CONFIG_VARIANTS.items():
        configs.append(VolumeConfig(f"{organ}-{key}", batch, chunk, in_flight=in_flight, variant=variant))
    return configs


@dataclasses.dataclass(frozen=True)
class VolumeTiming:
    """Medians over the rounds: wall seconds per volume, and the server's CPU seconds per volume (its Java
    frontend, its Python workers) — CPU is what a busy shared machine changes least."""

    seconds: float
    java_cpu_s: float
    worker_cpu_s: float


def time_volumes(
    client: InferenceClient,
    server_pgid: int,
    configs: list[VolumeConfig],
    volumes: dict[str, np.ndarray],
    rounds: int,
) -> dict[VolumeConfig, VolumeTiming]:
    """Each configuration's VolumeTiming, configurations interleaved round by round (after one warm-up
    pass each)."""
    samples: dict[VolumeConfig, list[tuple[float, float, float]]] = {c: [] for c in configs}

    def server_cpu() -> tuple[float, float]:
        by_comm = process_group_cpu_seconds(server_pgid)
        java = by_comm.get("java", 0.0)
        return java, sum(by_comm.values()) - java

    for round_ in range(rounds + 1):
        for config in configs:
            java_before, workers_before = server_cpu()
            start = time.perf_counter()
            segment_volume(
                client,
                config.model,
                volumes[config.dtype],
                version=None,
                chunk=config.chunk,
                in_flight=config.in_flight,
                timeout=300,
            )
            seconds = time.perf_counter() - start
            java_after, workers_after = server_cpu()
            if round_:  # round 0 warms each model up
                samples[config].append((seconds, java_after - java_before, workers_after - workers_before))
    return {
        c: VolumeTiming(*(statistics.median(column) for column in zip(*v, strict=True)))
        for c, v in samples.items()
    }


def volume_rows(
    organ: str = "liver",
    mar: Path | None = None,
    chunks: list[int] | None = None,
    batches: list[int] | None = None,
    slices: int = 64,
    rounds: int = 3,
) -> list[dict]:
    """Slices/s of a CT volume through a real TorchServe by chunk size and handler mini-batch size (see the
    module docstring); prints the table and returns its rows."""
    if organ != "liver":
        raise SystemExit("--volume measures the liver server (CT volumes from the liver training slices)")
    chunks, batches = list(chunks or VOLUME_CHUNKS), list(batches or VOLUME_BATCHES)
    mar = mar or MODEL_STORE / f"{organ}.mar"
    spec = load_organ_spec(organ)
    hu = np.round(liver_volume(PATIENTS[0])[0][:slices])  # whole HU, as a DICOM series gives them
    volumes = {"int16": hu.astype(np.float32), "float32": hu + np.float32(0.25)}
    configs = volume_configs(organ, chunks, batches, spec)
    with (
        tempfile.TemporaryDirectory(prefix="volume-bench-") as tmp,
        volume_server(mar, Path(tmp), batches, spec) as server,
    ):
        load_before = os.getloadavg()[0]
        with InferenceClient(
            server.grpc_inference_address, lambda: server.keys.inference, timeout=300
        ) as client:
            timings = time_volumes(client, server.process.pid, configs, volumes, rounds)
        load_after = os.getloadavg()[0]
    base = next(timings[c] for c in configs if c.chunk == 1 and not c.variant)
    table = []
    for config in configs:
        timing = timings[config]
        table.append(
            {
                "config": config.label,
                "chunk": config.chunk,
                "volume_batch": config.volume_batch,
                "wire": config.dtype,
                "in_flight": config.in_flight,
                "variant": config.variant,
                "seconds": round(timing.seconds, 2),
                "slices_per_s": round(len(hu) / timing.seconds, 2),
                "vs_chunk_1": round(base.seconds / timing.seconds, 2),
                "worker_cpu_ms_per_slice": round(1000 * timing.worker_cpu_s / len(hu), 1),
                "java_cpu_ms_per_slice": round(1000 * timing.java_cpu_s / len(hu), 1),
                "cpu_vs_chunk_1": round(
                    (base.worker_cpu_s + base.java_cpu_s) / (timing.worker_cpu_s + timing.java_cpu_s), 2
                ),
            }
        )
    print(
        f"{organ} {mar.name} (repacked with this checkout's handler), {len(hu)} slices 512² of patient 1 "
        f"(tools.liver_volumes), one TorchServe worker per model with {organ_threads(organ)} thread(s); "
        f"median of {rounds} interleaved rounds after a warm-up; 1-min load average {load_before:.2f} before "
        f"the timed rounds, {load_after:.2f} after (a shared machine: other work runs beside it, so wall "
        "times vary far more than CPU times)"
    )
    print(volume_markdown(table))
    return table


def volume_markdown(table: list[dict]) -> str:
    lines = [
        "| configuration | s per volume | slices/s | vs chunk 1 | server CPU ms a slice: worker + java "
        "| CPU vs chunk 1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['config']} | {r['seconds']:.2f} | {r['slices_per_s']:.1f} | {r['vs_chunk_1']:.2f}× "
        f"| {r['worker_cpu_ms_per_slice']:.1f} + {r['java_cpu_ms_per_slice']:.1f} "
        f"| {r['cpu_vs_chunk_1']:.2f}× |"
        for r in table
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.runtime_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--organ", default="liver", choices=sorted(MODEL_SIZES))
    parser.add_argument("--mar", type=Path, help="default: model-store/<organ>.mar")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runtimes", nargs="+", default=["torchscript", "onnxruntime", "openvino"])
    parser.add_argument("--threads", type=int, help="default: the organ's model-config.yaml torch_threads")
    parser.add_argument("--rounds", type=int, help="default 7 (--volume: 3)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--volume", action="store_true", help="a volume through a real TorchServe instead")
    parser.add_argument("--chunks", type=int, nargs="+", default=list(VOLUME_CHUNKS), help="with --volume")
    parser.add_argument("--volume-batches", type=int, nargs="+", default=list(VOLUME_BATCHES))
    parser.add_argument("--slices", type=int, default=64, help="with --volume: slices in the volume")
    args = parser.parse_args(argv)
    if args.volume:
        table = volume_rows(
            args.organ, args.mar, args.chunks, args.volume_batches, args.slices, args.rounds or 3
        )
        if args.json:
            args.json.write_text(json.dumps({"volume_rows": table}))
        return 0
    args.rounds = args.rounds or 7
    threads = args.threads or organ_threads(args.organ)
    torch.set_num_threads(threads)
    mar = args.mar or MODEL_STORE / f"{args.organ}.mar"
    card = json.loads(mar.with_suffix(".json").read_text())
    size = MODEL_SIZES[args.organ]
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        models, spec = load_models(args.organ, mar, Path(tmp), args.runtimes, threads)
        load_before = os.getloadavg()[0]
        sgemm_before = sgemm_gflops()
        seconds = time_batches(models, spec.channels, size, args.batches, args.rounds)
        sgemm = max(sgemm_before, sgemm_gflops())
    gflop = gflop_per_input(card, size)
    table = rows(seconds, gflop, sgemm)
    print(
        f"{args.organ} {mar.name} version {card.get('version')}: {size[0]}×{size[1]} inputs, "
        f"{gflop:.2f} GFLOP each; {threads} thread(s); sgemm {sgemm:.1f} GFLOP/s (torch.mm 2048², best of "
        f"5, before and after); median of {args.rounds} interleaved rounds; 1-min load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps({"sgemm_gflops": sgemm, "gflop_per_input": gflop, "rows": table}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
