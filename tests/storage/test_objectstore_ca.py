"""S3 over HTTPS against a private CA (Kubernetes: the namespace's internal CA, MEDSEG_S3_CA_FILE): the
store's certificate is verified against that CA file, a client without it refuses the server, and a CA
file that is not there is named at construction instead of failing later as a TLS error."""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

import pytest

from common.errors import ServiceUnavailable
from common.objectstore import ObjectStore, S3Credentials
from common.settings import Settings
from tools.objectstore_server import load_or_create_tls

LIST_BUCKETS = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Owner><ID>medseg</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>"
)


class _S3ListBuckets(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(LIST_BUCKETS)))
        self.end_headers()
        self.wfile.write(LIST_BUCKETS)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def https_store(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 answering S3 ListBuckets, its certificate signed by a private CA."""
    tls = load_or_create_tls(tmp_path_factory.mktemp("tls"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _S3ListBuckets)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", tls["ca"]
    server.shutdown()
    server.server_close()


def _store(endpoint: str, ca_file: Path | None) -> ObjectStore:
    return ObjectStore(endpoint, S3Credentials("key", "secret"), secure=True, ca_file=ca_file, retries=0)


def test_the_private_ca_verifies_the_stores_certificate(https_store):
    endpoint, ca = https_store
    _store(endpoint, ca).ping()  # ListBuckets over verified TLS


def test_without_the_ca_the_store_is_refused(https_store):
    endpoint, _ = https_store
    with pytest.raises(ServiceUnavailable):
        _store(endpoint, None).ping()  # public CAs (certifi) do not know the private CA


def test_another_ca_is_refused(https_store, tmp_path):
    endpoint, _ = https_store
    other = load_or_create_tls(tmp_path / "other")["ca"]
    with pytest.raises(ServiceUnavailable):
        _store(endpoint, other).ping()


def test_a_missing_ca_file_is_named_from_the_settings(tmp_path):
    missing = tmp_path / "ca.crt"
    settings = Settings(
        state_dir=tmp_path, s3_secure=True, s3_ca_file=missing, s3_access_key="k", s3_secret_key="s"
    )
    with pytest.raises(ServiceUnavailable, match="MEDSEG_S3_CA_FILE"):
        ObjectStore.from_settings(settings)
