"""`make bench`'s measuring and reporting functions on fake paths: the table's shape, not its timings."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from tools import bench


def _fake_paths(calls: dict[str, int]) -> dict:
    lock = threading.Lock()

    def caller(name: str):
        def call() -> bytes:
            with lock:
                calls[name] = calls.get(name, 0) + 1
            return bench.PNG_MAGIC

        return call

    return {name: caller(name) for name in bench.PATHS}


def test_measure_paths_calls_each_path_and_fills_the_table():
    calls: dict[str, int] = {}
    results = bench.measure_paths(_fake_paths(calls), requests=3, concurrency=2, burst_requests=4, warmup=1)

    # warm-up + interleaved serial rounds + one untimed call per burst thread + the burst
    assert calls == {name: 1 + 3 + 2 + 4 for name in bench.PATHS}
    assert [r.path for r in results] == list(bench.PATHS)
    for r in results:
        assert (r.requests, r.concurrency, r.burst_requests) == (3, 2, 4)
        assert 0 <= r.p50_ms <= r.p95_ms
        assert r.images_per_s > 0

    rows = bench.table_rows(results)
    assert rows[0]["path"] == bench.BASELINE
    assert all(set(row) >= {"path", "p50_ms", "p95_ms", "images_per_s", "ratio_p50"} for row in rows)

    table = bench.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(bench.PATHS)  # header, rule, one line per path
    assert table[1].startswith("|---|")
    assert all(line.startswith("| ") and line.count("|") == 9 for line in table[:1] + table[2:])
    assert "images/s (c=2)" in table[0]


def test_ratio_and_targets_from_known_numbers():
    def result(path: str, p50: float) -> bench.PathResult:
        return bench.PathResult(path, 30, p50, p50 * 1.5, p50, 8, 48, 10.0, p50 * 2)

    rows = bench.table_rows([result("in-process", 100.0), result("gateway-http", 130.0)])
    assert [r["ratio_p50"] for r in rows] == [1.0, 1.3]
    checked = bench.targets(rows)
    assert checked["http_p50_met"] is True  # 130 ms ≤ 150 ms
    assert checked["http_ratio_met"] is False  # 1.3× > 1.2×
    assert "| gateway-http | 130.0 | 195.0 | 1.30× |" in bench.markdown_table(rows)


def test_cpu_per_image_comes_from_the_probe_around_the_burst():
    used = iter([1.0, 1.4])  # CPU seconds of a fake server before and after the burst of 4 requests
    results = bench.measure_paths(
        {"only": lambda: bench.PNG_MAGIC},
        requests=1,
        concurrency=2,
        burst_requests=4,
        warmup=0,
        cpu=lambda: {"server": next(used)},
    )
    assert results[0].cpu_ms_per_image == {"server": 100.0}


def test_a_wrong_answer_fails_the_run_instead_of_being_timed():
    def broken() -> None:
        bench._check_png(b'{"error": "nope"}', "fake")

    with pytest.raises(RuntimeError, match="did not return a PNG"):
        bench.measure_paths({"broken": broken}, requests=1, concurrency=1, burst_requests=1, warmup=0)


def test_percentile_interpolates():
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile([5.0], 95) == 5.0
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_process_group_cpu_is_split_by_command_name():
    own = Path("/proc/self/comm").read_text().strip()
    sum(i * i for i in range(300_000))  # some CPU time of our own
    by_comm = bench.process_group_cpu_seconds(os.getpgrp())
    assert by_comm.get(own, 0.0) > 0.0 and all(v >= 0.0 for v in by_comm.values())


def test_torchserve_handler_time_counts_batches_of_one(tmp_path):
    logs = tmp_path / "torchserve" / "liver" / "logs"
    logs.mkdir(parents=True)
    line = "2026-11-24T06:39:12,991 - HandlerTime.ms:{}|#ModelName:liver,Level:Model|#hostname:vm,"
    line += "requestID:{},timestamp:1"
    (logs / "model_metrics.log").write_text(
        "\n".join(
            [
                line.format(70.0, "a"),
                line.format(72.0, "b"),
                line.format(400.0, "c,d,e"),  # a batch of three: not one image's time
                "2026-11-24T06:39:12,995 - PredictionTime.ms:71.0|#ModelName:liver|#requestID:a,timestamp:1",
            ]
        )
    )
    assert bench.torchserve_handler_ms(tmp_path) == {"median": 71.0, "calls": 2}
    assert bench.torchserve_handler_ms(tmp_path / "nothing") is None


def test_gflop_rates_against_sgemm_from_known_numbers():
    rows = [{"path": "in-process", "p50_ms": 500.0}, {"path": "in-process-runtime", "p50_ms": 250.0}]
    bench.compute_rates(rows, gflop=10.0, sgemm=50.0)
    assert [r["model_gflops"] for r in rows] == [20.0, 40.0]  # 10 GFLOP in 0.5 s / 0.25 s
    assert [r["share_of_sgemm"] for r in rows] == [0.4, 0.8]
    unknown = [{"path": "x", "p50_ms": 100.0}]
    bench.compute_rates(unknown, gflop=None, sgemm=50.0)
    assert unknown[0]["model_gflops"] is None and "| – | – |" in bench.markdown_table(
        [
            {
                **unknown[0],
                "p95_ms": 1.0,
                "ratio_p50": None,
                "images_per_s": 1.0,
                "p50_ms_concurrent": 1.0,
                "concurrency": 1,
            }
        ]
    )


def test_a_bfloat16_runtime_is_also_set_against_a_bfloat16_gemm():
    rows = [{"path": bench.BASELINE, "p50_ms": 1000.0}, {"path": bench.RUNTIME_PATH, "p50_ms": 250.0}]
    bench.compute_rates(rows, gflop=10.0, sgemm=50.0)
    assert rows[1]["share_of_sgemm"] == 0.8
    own = bench.runtime_gemm(rows, bench.REDUCED_GEMM["openvino-bf16"], 100.0)
    assert own == {"dtype": "bfloat16", "gflops": 100.0, "share": 0.4}  # 40 GFLOP/s of a 100 GFLOP/s GEMM
    assert bench.runtime_gemm(rows, bench.REDUCED_GEMM.get("openvino"), None) is None  # f32: sgemm alone


def test_sgemm_and_per_input_gflop():
    from tools import runtime_bench

    assert runtime_bench.sgemm_gflops(n=256, rounds=2) > 0
    assert runtime_bench.sgemm_gflops(n=256, rounds=2, dtype="bfloat16") > 0
    card = {"inference_gflops": 15.741, "inference_gflops_input": [512, 512]}
    assert runtime_bench.gflop_per_input(card, (1008, 1008)) == pytest.approx(61.01, abs=0.01)
    assert runtime_bench.gflop_per_input(card, (512, 512)) == 15.741


def test_runtime_bench_table_from_known_timings():
    from tools import runtime_bench

    table = runtime_bench.rows({("openvino", 1): 0.1, ("openvino", 4): 0.2}, gflop=2.0, sgemm=40.0)
    assert [(r["batch"], r["inputs_per_s"], r["ms_per_input"]) for r in table] == [
        (1, 10.0, 100.0),
        (4, 20.0, 50.0),
    ]
    assert [r["share_of_sgemm"] for r in table] == [0.5, 1.0]
    lines = runtime_bench.markdown(table).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| openvino | 1 | 100.0 | 10.00 | 100.0 | 20.0 | 50% |")


def test_volume_bench_grid_and_variants_follow_the_spec():
    import dataclasses

    from services.spec import load_organ_spec
    from tools import runtime_bench

    spec = load_organ_spec("liver")  # at a mini-batch of the grid's
    spec = dataclasses.replace(spec, inference=dataclasses.replace(spec.inference, volume_batch=4))
    configs = runtime_bench.volume_configs("liver", [1, 4, 16], [1, 4, 8], spec)
    grid = [(c.chunk, c.volume_batch) for c in configs if not c.variant]
    assert grid == [(1, 1), (4, 1), (16, 1), (4, 4), (16, 4), (16, 8)]  # no mini-batch above its chunk
    variants = [c for c in configs if c.variant]
    assert {(c.chunk, c.volume_batch) for c in variants} == {
        (spec.inference.volume_chunk, spec.inference.volume_batch)
    }
    assert [c.model for c in variants][-2:] == ["liver-ts", "liver-w2"]
    assert {c.dtype for c in variants} == {"int16", "float32"} and min(c.in_flight for c in variants) == 1
    row = {
        "config": configs[0].label,
        "seconds": 2.0,
        "slices_per_s": 32.0,
        "vs_chunk_1": 1.0,
        "worker_cpu_ms_per_slice": 40.0,
        "java_cpu_ms_per_slice": 2.5,
        "cpu_vs_chunk_1": 1.0,
    }
    lines = runtime_bench.volume_markdown([row]).splitlines()
    assert lines[2] == "| chunk 1, mini-batch 1 | 2.00 | 32.0 | 1.00× | 40.0 + 2.5 | 1.00× |"


def test_in_process_segmenter_runs_the_spec_runtime_and_falls_back(tmp_path):
    """Both in-process rows answer the same image the same way; an archive without model.onnx runs TorchScript
    for the 'spec' row (and says so)."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from services.spec import load_organ_spec
    from trainer.package import build_mar

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
    scripted = tmp_path / "net.pt"
    torch.jit.script(net.eval()).save(str(scripted))
    spec = dataclasses.replace(load_organ_spec("liver"), runtime="openvino")
    with_onnx = build_mar(scripted, "liver", spec, tmp_path / "a", "liver", "1")
    without = build_mar(
        scripted,
        "liver",
        spec.__class__.from_dict({**spec.to_dict(), "runtime": "torchscript"}),
        tmp_path / "b",
        "liver",
        "1",
        onnx=False,
    )
    image = Path(bench.DEFAULT_IMAGES["liver"]).read_bytes()
    ts = bench.InProcessSegmenter(with_onnx, tmp_path / "ts", 1)
    ov = bench.InProcessSegmenter(with_onnx, tmp_path / "ov", 1, runtime="spec")
    assert (ts.runtime, ov.runtime) == ("torchscript", "openvino")
    a, b = (np.asarray(Image.open(io.BytesIO(seg(image)))).astype(int) for seg in (ts, ov))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert bench.InProcessSegmenter(without, tmp_path / "none", 1, runtime="spec").runtime == "torchscript"


def test_gateway_answers_are_checked_at_the_image_size():
    image = Path(bench.DEFAULT_IMAGES["cells"]).read_bytes()
    assert bench._image_size(image) == (1000, 1000)
    bench._check_masks(7, 1000, 1000, "cells", bench._image_size(image))
    with pytest.raises(RuntimeError, match="expected 7 at 1000x1000"):
        bench._check_masks(7, 512, 512, "cells", (1000, 1000))


def test_breakdown_table_sets_all_masks_beside_none():
    all_masks = {"check upload (header)": 0.1, "threshold + encode the mask PNGs asked for": 5.2,
                 "gateway work besides TorchServe": 9.04}  # fmt: skip
    no_masks = {"check upload (header)": 0.2, "threshold + encode the mask PNGs asked for": 0.0,
                "gateway work besides TorchServe": 4.0}  # fmt: skip
    assert bench.breakdown_table(all_masks, no_masks).splitlines() == [
        "| part | all 7 masks | masks=none |",
        "|---|---:|---:|",
        "| check upload (header) | 0.1 | 0.2 |",
        "| threshold + encode the mask PNGs asked for | 5.2 | 0.0 |",
        "| gateway work besides the TorchServe call (key check included) | **9.0** | **4.0** |",
    ]
    assert bench.breakdown_table(all_masks, None).splitlines()[0] == "| part | all 7 masks |"
