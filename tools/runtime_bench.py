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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from services.runtime import build
from trainer.export import organ_threads, unpack_runtimes

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_STORE = REPO_ROOT / "model-store"
MODEL_SIZES = {"liver": (256, 256), "cells": (1008, 1008)}  # what the network sees per served input


def sgemm_gflops(n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n×n by n×n float32 matrix product (torch.mm, torch's current threads): the best
    of `rounds`, the machine's attainable dense f32 rate against which a network's rate is judged."""
    a, b = torch.randn(n, n), torch.randn(n, n)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.runtime_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--organ", default="liver", choices=sorted(MODEL_SIZES))
    parser.add_argument("--mar", type=Path, help="default: model-store/<organ>.mar")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runtimes", nargs="+", default=["torchscript", "onnxruntime", "openvino"])
    parser.add_argument("--threads", type=int, help="default: the organ's model-config.yaml torch_threads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
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
