"""`make soak` (tools.soak) against the test stack: a real gateway process over the session's object store
and organ servers, a small run (20 requests per transport at concurrency 4). Checks the report's structure,
that every request succeeded and that memory was sampled for every process of the stack — not timings."""

from __future__ import annotations

import logging
import threading

import pytest

from common.objectstore import ObjectStore
from tests.data import LIVER_SLICE
from tests.hardening.live_gateway import LiveGateway
from tools import soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUESTS, CONCURRENCY = 20, 4


@pytest.fixture(scope="module")
def live(stack_settings, objectstore, tmp_path_factory):
    work = tmp_path_factory.mktemp("soak")
    gateway = LiveGateway.create(stack_settings.model_copy(update={"state_dir": work}), work)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.close()


def test_soak_reports_errors_latency_and_memory_of_every_process(live, torchserve_liver, objectstore_server):
    if not LIVER_SLICE.is_file():
        pytest.skip(f"shared data not found: {LIVER_SLICE}")
    groups = {
        "gateway": live.proc.pid,
        "torchserve-liver": torchserve_liver.server.pid,
        "objectstore": objectstore_server.running_pid(),
    }
    target = soak.Target(live.http_url, live.grpc_address, live.api_key, groups)

    report = soak.run_soak(target, LIVER_SLICE.read_bytes(), REQUESTS, CONCURRENCY, interval=0.2)

    assert [r["transport"] for r in report["transports"]] == ["http", "grpc"]
    for r in report["transports"]:
        assert (r["requests"], r["errors"], r["first_errors"]) == (REQUESTS, 0, []), r
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["requests_per_s"] > 0
    roles = {m["process"] for m in report["memory"]}
    expected = {"gateway/gateway", "torchserve-liver/frontend", "torchserve-liver/worker", "objectstore/weed"}
    assert expected <= roles, roles
    for m in report["memory"]:
        assert 0 < m["start_mb"] <= m["peak_mb"] and 0 < m["end_mb"] <= m["peak_mb"], m
        # the sampler keeps sampling between the last checkpoint and the end: the two may differ
        assert list(m["after_mb"]) == ["http", "grpc"] and 0 < m["after_mb"]["grpc"] <= m["peak_mb"], m

    table = soak.format_report(report).splitlines()
    assert table[2] == "| transport | requests | errors | p50 ms | p95 ms | p99 ms | throughput req/s |"
    assert table[4].startswith(f"| http | {REQUESTS} | 0 |")
    assert table[5].startswith(f"| grpc | {REQUESTS} | 0 |")
    assert sum(line.startswith("| gateway/gateway |") for line in table) == 1


def test_a_failing_call_is_counted_with_its_message():
    calls = iter(range(10))

    def flaky() -> None:
        if next(calls) % 5 == 0:
            raise RuntimeError("gateway HTTP answered 503")

    result = soak.drive("http", flaky, requests=10, concurrency=2)
    assert (result.requests, result.errors) == (10, 2)
    assert result.first_errors == ["RuntimeError: gateway HTTP answered 503"] * 2


def test_the_store_client_keeps_its_connections_under_the_gateways_concurrency(
    s3_settings, objectstore, caplog
):
    """Found by `make soak`: 16 callers made the gateway's S3 client open more connections than its pool
    kept (8 result writers + the callers' thumbnails), so it discarded them after every burst ("Connection
    pool is full") and reconnected for the next."""
    store = ObjectStore.from_settings(s3_settings)  # a client of its own, as the gateway process has
    callers = 24  # the data plane's 8 writers and 16 request threads writing at once
    start = threading.Barrier(callers)
    failures: list[Exception] = []

    def put(n: int) -> None:
        start.wait()
        try:
            for i in range(3):
                store.put_bytes(store.buckets.results, f"soak-pool/{n}-{i}", b"x" * 1024)
        except Exception as exc:  # reported below
            failures.append(exc)

    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    threads = [threading.Thread(target=put, args=(n,)) for n in range(callers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        store.delete_prefix(store.buckets.results, "soak-pool/")
    assert failures == []
    assert [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()] == []
