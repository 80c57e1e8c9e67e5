"""Where a network's time goes in OpenVINO, and how near the GEMM of the arithmetic it computes in it runs.

    .venv/bin/python -m tools.runtime_profile [--organ liver] [--precision bf16|f32] [--threads N]
                                              [--rounds 20] [--json FILE]

Reads model.onnx from the organ's shipped archive (model-store/<organ>.mar), compiles it in OpenVINO for one
input of the model's size (liver 256², cells 1008²) in the precision its spec's runtime computes in
(`openvino-bf16`: bfloat16, else f32) with the organ's worker threads and per-layer counters on, runs it
`rounds` times and adds up OpenVINO's per-layer time by layer type (mean per run). The FLOP are the
convolutions' (and transposed convolutions'), counted from the graph. Against torch.mm's 2048² GEMM in f32
and in bfloat16 on the same threads (tools.runtime_bench.sgemm_gflops, best before and after), it prints:

- the network: median ms a pass, GFLOP/s, and that as a share of each GEMM;
- its convolutions inside the network: their FLOP over their own time — how well the kernels use the
  arithmetic on these shapes;
- the network were its layout reorders free: the most any rewrite that removes them (and costs nothing
  itself) could give. OpenVINO's CPU plugin computes convolutions in channel-blocked layouts and a GroupNorm,
  exported as Reshape → MVN → Reshape over (N, groups, C/groups·H·W), in a plain one, so every GroupNorm
  pays a reorder each way.

The bench's "model compute ≥ 60 % of sgemm" target (tools.bench) is this network rate against the f32
GEMM; docs/runtime-ceiling.md says what the profile shows for the shipped networks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.runtime import OPENVINO_PRECISIONS
from tools.runtime_bench import MODEL_SIZES, MODEL_STORE, sgemm_gflops
from trainer.export import organ_threads, unpack_runtimes

PRECISIONS = {"f32": "float32", "bf16": "bfloat16"}  # OpenVINO's precision hint → its GEMM's torch dtype
REORDER = "Reorder"
CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


def conv_gflop(model) -> float:
    """GFLOP of one pass through `model`'s (static-shaped) convolutions: 2 per multiply-add, each weight once
    per output pixel (per input pixel for a transposed convolution)."""
    flop = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in CONVOLUTIONS:
            continue
        weights = int(np.prod(list(op.input(1).get_shape())))
        pixels_of = op.input(0) if kind == "ConvolutionBackpropData" else op.output(0)
        flop += 2 * weights * int(np.prod(list(pixels_of.get_shape())[2:]))
    return flop / 1e9


def profile(model, precision: str, threads: int, rounds: int) -> tuple[float, dict[str, float]]:
    """(median seconds a pass, mean seconds a pass by OpenVINO layer type) of the static-shaped `model` run
    `rounds` times on one random input, compiled on one stream of `threads` threads."""
    import openvino as ov

    shape = list(model.input(0).get_shape())
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERF_COUNT": True,
    }
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(2):
        request.infer({0: x})  # warm-up
    seconds, by_type = [], {}
    for _ in range(rounds):
        start = time.perf_counter()
        request.infer({0: x})
        seconds.append(time.perf_counter() - start)
        for layer in request.profiling_info:
            by_type[layer.node_type] = by_type.get(layer.node_type, 0.0) + layer.real_time.total_seconds()
    return statistics.median(seconds), {kind: total / rounds for kind, total in by_type.items()}


def summary(
    seconds: float, by_type: dict[str, float], gflop: float, gemm: dict[str, float], precision: str
) -> dict:
    """The figures of the module docstring from one profile: rates in GFLOP/s, shares of each GEMM."""

    def rate(s: float) -> dict:
        gflops = gflop / s if s > 0 else float("inf")
        return {
            "ms": round(1e3 * s, 2),
            "gflops": round(gflops, 1),
            **{f"of_{name}_gemm": round(gflops / value, 3) for name, value in gemm.items()},
        }

    conv_s = sum(by_type.get(kind, 0.0) for kind in CONVOLUTIONS)
    counted = sum(by_type.values())
    return {
        "precision": precision,
        "gflop": round(gflop, 3),
        "gemm_gflops": {name: round(value, 1) for name, value in gemm.items()},
        "network": rate(seconds),
        "convolutions": rate(conv_s),
        "without_reorders": rate(seconds - by_type.get(REORDER, 0.0)),
        "by_type": [
            {"type": kind, "ms": round(1e3 * s, 2), "share": round(s / counted, 3)}
            for kind, s in sorted(by_type.items(), key=lambda kv: -kv[1])
            if s > 0
        ],
    }


def report(organ: str, threads: int, result: dict) -> str:
    gemm = result["gemm_gflops"]

    def shares(row: dict) -> str:
        return ", ".join(f"{100 * row[f'of_{n}_gemm']:.0f}% of the {n} GEMM" for n in gemm)

    lines = [
        f"{organ}: {result['gflop']:.3f} GFLOP of convolutions a pass; OpenVINO {result['precision']}, "
        f"{threads} thread(s); GEMM (torch.mm 2048²) "
        + ", ".join(f"{n} {v} GFLOP/s" for n, v in gemm.items()),
        "",
        "| layer type | ms a pass | share of the profiled time |",
        "|---|---:|---:|",
        *(f"| {r['type']} | {r['ms']:.2f} | {100 * r['share']:.1f}% |" for r in result["by_type"]),
        "",
    ]
    for key, what in (
        ("network", "the network"),
        ("convolutions", "its convolutions, inside it"),
        ("without_reorders", "the network were its reorders free"),
    ):
        row = result[key]
        lines.append(f"{what}: {row['ms']:.2f} ms, {row['gflops']:.1f} GFLOP/s = {shares(row)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import openvino as ov

    parser = argparse.ArgumentParser(prog="tools.runtime_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--organ", default="liver", choices=sorted(MODEL_SIZES))
    parser.add_argument("--mar", type=Path, help="default: model-store/<organ>.mar")
    parser.add_argument(
        "--precision", choices=sorted(PRECISIONS), help="default: what the spec's runtime uses"
    )
    parser.add_argument("--threads", type=int, help="default: the organ's model-config.yaml torch_threads")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    threads = args.threads or organ_threads(args.organ)
    torch.set_num_threads(threads)
    mar = args.mar or MODEL_STORE / f"{args.organ}.mar"
    with tempfile.TemporaryDirectory(prefix="runtime-profile-") as tmp:
        spec = unpack_runtimes(mar, Path(tmp))
        model = ov.Core().read_model(str(Path(tmp) / "model.onnx"))
    precision = args.precision or OPENVINO_PRECISIONS.get(spec.runtime, "f32")
    model.reshape([1, spec.channels, *MODEL_SIZES[args.organ]])
    gemm_before = {name: sgemm_gflops(dtype=dtype) for name, dtype in PRECISIONS.items()}
    seconds, by_type = profile(model, precision, threads, args.rounds)
    gemm = {name: max(gemm_before[name], sgemm_gflops(dtype=dtype)) for name, dtype in PRECISIONS.items()}
    result = summary(seconds, by_type, conv_gflop(model), gemm, precision)
    print(report(args.organ, threads, result))
    if args.json:
        args.json.write_text(json.dumps({"organ": args.organ, "threads": threads, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
