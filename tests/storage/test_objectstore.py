"""ObjectStore against a real SeaweedFS: round trips, streaming, NotFound and ServiceUnavailable."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import time

import httpx
import pytest

from common.errors import NotFound, ServiceUnavailable
from common.objectstore import PART_SIZE, ObjectStore
from tools.objectstore_server import S3Credentials

pytestmark = pytest.mark.integration


def test_put_get_list_delete_round_trip(clean_buckets):
    store = clean_buckets
    bucket = store.buckets.results
    # Under a prefix of its own: SeaweedFS keeps emptied "directories" that other tests' keys left behind.
    root = f"roundtrip-{os.getpid()}-{time.monotonic_ns()}/"
    store.put_bytes(bucket, f"{root}a/1.bin", b"one")
    store.put_bytes(bucket, f"{root}a/2.bin", b"two!")
    store.put_bytes(bucket, f"{root}b/3.bin", b"three")

    assert store.get_bytes(bucket, f"{root}a/2.bin") == b"two!"
    assert store.exists(bucket, f"{root}a/1.bin") and not store.exists(bucket, f"{root}a/9.bin")
    assert store.stat(bucket, f"{root}b/3.bin").size == 5
    assert [o.key for o in store.list(bucket, f"{root}a/")] == [f"{root}a/1.bin", f"{root}a/2.bin"]
    assert {o.key for o in store.list(bucket, root, recursive=False)} == {f"{root}a/", f"{root}b/"}

    assert store.delete_prefix(bucket, f"{root}a/") == 2
    assert [o.key for o in store.list(bucket, root)] == [f"{root}b/3.bin"]
    store.delete(bucket, f"{root}b/3.bin")
    store.delete(bucket, f"{root}b/3.bin")  # deleting a missing object is not an error
    assert store.list(bucket, root) == []


def test_missing_object_and_bucket_are_not_found(objectstore):
    with pytest.raises(NotFound):
        objectstore.get_bytes(objectstore.buckets.results, "no/such/key")
    with pytest.raises(NotFound):
        objectstore.stat(objectstore.buckets.results, "no/such/key")
    with pytest.raises(NotFound):
        objectstore.get_bytes("medseg-no-such-bucket", "key")


def test_bytes_in_memory_go_in_one_put_and_only_very_large_ones_in_parts(clean_buckets, monkeypatch):
    """A multipart object's ETag is "<md5 of the parts' md5s>-<parts>"; one PUT's is the data's own md5."""
    store = clean_buckets
    data = os.urandom(PART_SIZE + 1024 * 1024)  # minio's own default would cut this in 5 MiB parts
    store.put_bytes(store.buckets.runs, "one-put.bin", data)
    assert store.stat(store.buckets.runs, "one-put.bin").etag.strip('"') == hashlib.md5(data).hexdigest()
    monkeypatch.setattr("common.objectstore.SINGLE_PUT_MAX_BYTES", 8 * 1024 * 1024)
    store.put_bytes(store.buckets.runs, "in-parts.bin", data)
    assert store.stat(store.buckets.runs, "in-parts.bin").etag.strip('"').endswith("-2")  # PART_SIZE, rest
    assert store.get_bytes(store.buckets.runs, "in-parts.bin") == data


def test_big_file_is_uploaded_in_parts_and_streamed_back(clean_buckets, tmp_path):
    store = clean_buckets
    path = tmp_path / "big.bin"
    data = os.urandom(PART_SIZE + 123_457)  # more than one multipart part
    path.write_bytes(data)
    store.put_file(store.buckets.runs, "big.bin", path)
    assert store.stat(store.buckets.runs, "big.bin").size == len(data)

    digest = hashlib.sha256()
    for chunk in store.stream(store.buckets.runs, "big.bin", chunk_size=1 << 20):
        assert len(chunk) <= 1 << 20
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()

    with store.open(store.buckets.runs, "big.bin") as fh:
        assert fh.read(10) == data[:10]
    assert store.download(store.buckets.runs, "big.bin", tmp_path / "copy.bin").read_bytes() == data


def test_concurrent_downloads_into_one_cache_never_collide(clean_buckets, tmp_path):
    store = clean_buckets
    data = os.urandom(3 * 1024 * 1024)
    store.put_bytes(store.buckets.runs, "shared.bin", data)
    target = tmp_path / "cache" / "shared.bin"
    errors: list[BaseException] = []

    def fetch():
        try:
            store.download(store.buckets.runs, "shared.bin", target)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["shared.bin"]  # no temp file left behind


def test_a_failed_download_leaves_no_temp_file(clean_buckets, tmp_path):
    with pytest.raises(NotFound):
        clean_buckets.download(clean_buckets.buckets.runs, "missing.bin", tmp_path / "missing.bin")
    assert list(tmp_path.iterdir()) == []


def test_stream_of_unknown_length(clean_buckets):
    store = clean_buckets
    info = store.put_stream(store.buckets.runs, "log.txt", io.BytesIO(b"x" * 1000), length=-1)
    assert info.size == 1000
    assert store.get_bytes(store.buckets.runs, "log.txt") == b"x" * 1000


def test_presigned_url_works_and_anonymous_access_is_refused(clean_buckets):
    store = clean_buckets
    store.put_bytes(store.buckets.results, "p.txt", b"signed")
    url = store.presigned_get_url(store.buckets.results, "p.txt")
    assert httpx.get(url, timeout=5).content == b"signed"
    anonymous = httpx.get(f"http://{store.endpoint}/{store.buckets.results}/p.txt", timeout=5)
    assert anonymous.status_code == 403


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wrong_credentials_are_service_unavailable(objectstore):
    wrong = ObjectStore(objectstore.endpoint, S3Credentials("NOPE", "not-the-secret"), retries=0)
    with pytest.raises(ServiceUnavailable, match="object store unavailable"):
        wrong.ping()


def test_unavailable_names_no_address_bucket_or_key_but_the_log_does(caplog):
    port = _closed_port()
    store = ObjectStore(f"127.0.0.1:{port}", S3Credentials("k", "s"), retries=0)
    with caplog.at_level("WARNING", logger="common.objectstore"):
        with pytest.raises(ServiceUnavailable) as raised:
            store.put_bytes("medseg-results", "patients/p-17/probability.png", b"x")
    for secret in (str(port), "medseg-results", "p-17"):
        assert secret not in raised.value.message
        assert secret in caplog.text  # the operator still sees where it failed


def test_store_down_fails_fast_and_data_survives_restart(objectstore_server, objectstore):
    bucket = objectstore.buckets.models
    objectstore.put_bytes(bucket, "survivor.txt", b"still here")
    objectstore_server.stop()
    try:
        for call in (
            objectstore.ping,
            lambda: objectstore.get_bytes(bucket, "survivor.txt"),
            lambda: objectstore.put_bytes(bucket, "x", b"x"),
        ):
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="object store unavailable"):
                call()
            assert time.monotonic() - started < 3.0
    finally:
        objectstore_server.start(timeout=60)
    assert objectstore.get_bytes(bucket, "survivor.txt") == b"still here"


def test_a_server_that_never_answers_times_out(tmp_path):
    # A listening socket that never accepts: TCP connects (kernel backlog) but no byte ever comes back.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        store = ObjectStore(
            f"127.0.0.1:{port}", S3Credentials("a", "b"), connect_timeout=0.5, read_timeout=0.5, retries=1
        )
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="object store unavailable"):
            store.ping()
        assert time.monotonic() - started < 4.0


def test_5xx_is_retried_a_bounded_number_of_times():
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = ObjectStore(f"127.0.0.1:{server.server_port}", S3Credentials("a", "b"), retries=2)
        with pytest.raises(ServiceUnavailable, match="object store unavailable"):
            store.ping()
        assert len(hits) == 3  # first try + 2 retries, then give up
    finally:
        server.shutdown()
        server.server_close()
