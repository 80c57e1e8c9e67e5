"""`make bench`'s measuring and reporting functions on fake paths: the table's shape, not its timings."""

from __future__ import annotations

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
    assert all(line.startswith("| ") and line.count("|") == 7 for line in table[:1] + table[2:])
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
