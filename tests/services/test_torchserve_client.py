"""InferenceClient against an in-process fake of TorchServe's gRPC inference API: deadline, bounded retry
on UNAVAILABLE, token in metadata, fast failure when the organ server is down, per-image JSON errors, TLS."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from common.errors import InvalidInput, MedSegError, NotFound, ServiceUnavailable

inference_pb2 = pytest.importorskip("torchserve_grpc.inference_pb2", reason="run `make protos`")
from torchserve_grpc import inference_pb2_grpc  # noqa: E402

from common.torchserve_client import InferenceClient  # noqa: E402
from tools.private_ca import create_ca, issue  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


class FakeTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self):
        self.failures = []  # status codes (or (code, detail)) to answer before succeeding
        self.calls = 0
        self.metadata = None
        self.release = threading.Event()
        self.hang = False

    def Predictions(self, request, context):
        self.calls += 1
        self.metadata = dict(context.invocation_metadata())
        self.model_name = request.model_name
        if self.hang:
            self.release.wait(10)
        if self.failures:
            failure = self.failures.pop(0)
            context.abort(*(failure if isinstance(failure, tuple) else (failure, "simulated")))
        if request.input["data"] == b"bad":
            body = b'{"error": {"code": "invalid_input", "message": "not an image"}}'
            return inference_pb2.PredictionResponse(prediction=body)
        return inference_pb2.PredictionResponse(prediction=PNG + request.input["data"])

    def Ping(self, request, context):
        return inference_pb2.TorchServeHealthResponse(health='{"status": "Healthy"}')


def _serve(
    servicer: FakeTorchServe, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def fake():
    servicer = FakeTorchServe()
    server, port = _serve(servicer)
    yield servicer, f"127.0.0.1:{port}"
    servicer.release.set()
    server.stop(0)


def test_calls_are_spread_over_every_replica_the_target_names():
    # in Kubernetes the target is a headless Service whose DNS lists each replica; "ipv4:a,b" is the same
    # resolver result without DNS
    replicas = [FakeTorchServe() for _ in range(3)]
    servers = [_serve(r) for r in replicas]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
        client = InferenceClient(target)
        for _ in range(60):  # connections come up one by one: until each replica has answered once
            if all(r.calls for r in replicas):
                break
            client.predict("liver", b"img")
        for replica in replicas:
            replica.calls = 0
        for _ in range(30):
            assert client.predict("liver", b"img") == PNG + b"img"
        calls = [r.calls for r in replicas]
        assert sum(calls) == 30 and min(calls) >= 8, calls  # pick_first would give [30, 0, 0]
    finally:
        for server, _ in servers:
            server.stop(0)


def test_predict_sends_model_name_and_key(fake):
    servicer, address = fake
    client = InferenceClient(address, key=lambda: "secret-key")
    assert client.predict("liver", b"img") == PNG + b"img"
    assert servicer.model_name == "liver"
    assert servicer.metadata["authorization"] == "Bearer secret-key"
    assert client.ping() == "Healthy"
    assert client.health() == (True, "Healthy")


def test_retries_unavailable_a_bounded_number_of_times(fake):
    servicer, address = fake
    servicer.failures = [grpc.StatusCode.UNAVAILABLE] * 2
    assert InferenceClient(address, retries=2).predict("liver", b"x") == PNG + b"x"
    assert servicer.calls == 3
    servicer.calls, servicer.failures = 0, [grpc.StatusCode.UNAVAILABLE] * 5
    with pytest.raises(ServiceUnavailable):
        InferenceClient(address, retries=2).predict("liver", b"x")
    assert servicer.calls == 3


def test_invalid_argument_is_not_retried_and_maps_to_4xx(fake):
    servicer, address = fake
    servicer.failures = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(InvalidInput):
        InferenceClient(address, retries=2).predict("liver", b"x")
    assert servicer.calls == 1


def test_hung_server_costs_at_most_the_deadline(fake):
    servicer, address = fake
    servicer.hang = True
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        InferenceClient(address, timeout=0.5).predict("liver", b"x")
    assert time.monotonic() - started < 2.0


def test_down_server_fails_fast():
    with socket_reserved() as port:
        client = InferenceClient(f"127.0.0.1:{port}", timeout=5.0, retries=2, label="organ server 'cells'")
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="organ server 'cells' is unavailable") as info:
            client.predict("cells", b"x")
        assert time.monotonic() - started < 2.0
        assert info.value.code == "organ_unavailable" and str(port) not in info.value.message
        assert client.health(0.5) == (False, "unavailable")


class socket_reserved:
    """A local port nothing listens on (bound, never listening) for the duration."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_per_image_error_body_is_invalid_input(fake):
    _, address = fake
    with pytest.raises(InvalidInput, match="not an image"):
        InferenceClient(address).predict("liver", b"bad")


def test_server_side_failures_map_to_transport_neutral_errors(fake):
    servicer, address = fake
    client = InferenceClient(address, retries=0, label="organ server 'liver'")
    servicer.failures = [grpc.StatusCode.NOT_FOUND]
    with pytest.raises(NotFound):
        client.predict("liver", b"x")
    servicer.failures = [grpc.StatusCode.PERMISSION_DENIED]
    with pytest.raises(ServiceUnavailable, match="refused our token") as info:
        client.predict("liver", b"x")
    assert info.value.code == "organ_auth"
    servicer.failures = [grpc.StatusCode.INTERNAL]
    with pytest.raises(ServiceUnavailable, match="failed to segment") as info:
        client.predict("liver", b"x")
    assert info.value.code == "organ_error" and "simulated" not in info.value.message
    assert isinstance(info.value, MedSegError)


@pytest.mark.parametrize(
    "detail",
    [
        "Model not found: liver",
        # TorchServe 0.12's answer for a version it does not serve (issue 15 finding 5: it was a 503)
        "Model version: cand-1 does not exist for model: liver\n"
        "org.pytorch.serve.archive.model.ModelVersionNotFoundException",
    ],
)
def test_a_model_or_version_the_server_does_not_serve_is_not_found(fake, detail):
    servicer, address = fake
    servicer.failures = [(grpc.StatusCode.INTERNAL, detail)]
    with pytest.raises(NotFound, match=detail.splitlines()[0]):
        InferenceClient(address, retries=0).predict("liver", b"x", version="cand-1")


def test_a_renewed_channel_reaches_the_replicas_a_scale_out_added(monkeypatch):
    """The target resolves to one replica, then (as a headless Service's DNS after `kubectl scale`) to three.
    A client that renews its channel calls all three once the renewal is due; a call still running on the
    old channel when it is renewed finishes, and the old channel is closed at the next renewal."""
    replicas = [FakeTorchServe() for _ in range(3)]
    servers = [_serve(r) for r in replicas]
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    try:
        client = InferenceClient(f"ipv4:127.0.0.1:{servers[0][1]}", timeout=5, renew_after_s=60)
        assert client.renew_after_s == 60
        for _ in range(5):
            client.predict("liver", b"img")
        assert [r.calls for r in replicas] == [5, 0, 0]

        replicas[0].hang = True  # a call that is running on the old channel while it is renewed
        slow = futures.ThreadPoolExecutor(1).submit(client.predict, "liver", b"slow")
        for _ in range(100):
            if replicas[0].calls == 6:
                break
            time.sleep(0.01)
        replicas[0].hang = False  # the slow call waits on; the next ones are answered at once
        client.address = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)  # DNS now says three
        clock[0] += 59
        client.predict("liver", b"img")  # not yet due: the old channel, the old answer (one replica)
        assert [r.calls for r in replicas][1:] == [0, 0]
        clock[0] += 1
        for _ in range(60):  # due: a new channel, connecting to each replica in turn
            if all(r.calls for r in replicas[1:]):
                break
            client.predict("liver", b"img")
        assert all(r.calls for r in replicas), [r.calls for r in replicas]
        replicas[0].release.set()
        assert slow.result(timeout=10) == PNG + b"slow"  # the renewal did not cut it off

        old = client._retired
        clock[0] += 60
        client.predict("liver", b"img")
        assert client._retired is not old  # the channel retired a renewal ago is closed now
        with pytest.raises(ValueError):
            old.unary_unary("/x")(b"", timeout=1)  # a closed channel refuses new calls
    finally:
        for server, _ in servers:
            server.stop(0)


def test_renewal_waits_at_least_twice_the_deadline():
    assert InferenceClient("127.0.0.1:1", timeout=10, renew_after_s=5).renew_after_s == 20
    assert InferenceClient("127.0.0.1:1", timeout=10).renew_after_s is None


def test_every_channel_of_a_tls_client_is_tls_renewed_ones_included(monkeypatch, tmp_path):
    """A server that speaks TLS only, its certificate for the headless Service's name (as in Kubernetes):
    the client holding the CA reaches it before and after renewing its channel; the name is checked."""
    ca = create_ca(tmp_path / "ca", "medseg-internal-ca")
    pair = issue(ca, tmp_path / "server", "torchserve-pods-liver", ["DNS:torchserve-pods-liver"])
    credentials = grpc.ssl_server_credentials([(pair.key.read_bytes(), pair.cert.read_bytes())])
    servicer = FakeTorchServe()
    server, port = _serve(servicer, credentials)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    try:
        address = f"ipv4:127.0.0.1:{port}"  # names no host: the certificate's name is given
        client = InferenceClient(address, timeout=5, renew_after_s=60, ca_file=ca.cert,
                                 server_name="torchserve-pods-liver")  # fmt: skip
        assert client.predict("liver", b"a") == PNG + b"a"
        first = client._channel
        clock[0] += 60
        assert client.predict("liver", b"b") == PNG + b"b"
        assert client._channel is not first and servicer.calls == 2  # a new channel, TLS too
        plaintext = InferenceClient(address, timeout=5, retries=0)
        other_name = InferenceClient(
            address, timeout=5, retries=0, ca_file=ca.cert, server_name="torchserve-pods-cells"
        )
        for refused in (plaintext, other_name):
            with pytest.raises(ServiceUnavailable):
                refused.predict("liver", b"c")
        assert servicer.calls == 2
    finally:
        server.stop(0)
