"""A real TorchServe serving gRPC over TLS (enable_grpc_ssl, as the Kubernetes organ servers do, issue 23
finding 12) with a certificate like cert-manager's: signed by a private CA, for the headless Service's name
only, its key in PKCS#8. A client holding that CA and checking that name segments and manages; a plaintext
client, a client trusting another CA and a client expecting another name are refused in the handshake."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.errors import ServiceUnavailable
from common.launcher import GrpcTls, OrganServer, free_ports
from common.model_store import PodsManagement
from common.torchserve_client import InferenceClient, ManagementClient
from tests.api.conftest import png
from tests.fixtures.torchserve import _require_runtime, build_test_mar
from tools.private_ca import create_ca, issue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = "torchserve-pods-liver"  # what the gateway dials in Kubernetes: dns:///torchserve-pods-liver:7070
TIMEOUT = 120  # s per call: the 2-core test machine also runs other tests


@pytest.fixture(scope="module")
def tls_liver(tmp_path_factory):
    """A liver TorchServe whose gRPC ports speak TLS only, and the CA that signed its certificate."""
    _require_runtime()
    root = tmp_path_factory.mktemp("tls-liver")
    ca = create_ca(root / "ca", "medseg-internal-ca")
    cert = issue(ca, root / "server", SERVICE, [f"DNS:{SERVICE}", f"DNS:{SERVICE}.medseg.svc"])
    assert cert.key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as TorchServe needs
    store = root / "store"
    store.mkdir()
    mar = build_test_mar("liver", store, "liver", "1")
    server = OrganServer(
        "liver", state_dir=root / "state", model_store=store, models={"liver": mar.name}, ports=free_ports(),
        grpc_tls=GrpcTls(cert.cert, cert.key, ca.cert, server_name=SERVICE),
    )  # fmt: skip
    server.start(timeout=300)  # its readiness wait already talks TLS: it returns only if TLS works
    yield server, ca.cert
    server.stop()


def test_a_client_with_the_ca_segments_and_manages_over_tls(tls_liver):
    server, ca = tls_liver
    with InferenceClient(server.grpc_inference_address, server.keys.inference, ca_file=ca,
                         server_name=SERVICE, timeout=TIMEOUT) as client:  # fmt: skip
        assert client.ping() == "Healthy"
        image = png(np.full((80, 96), 120, np.uint8))
        answer = Image.open(io.BytesIO(client.predict("liver", image)))
        assert (answer.format, answer.size) == ("PNG", (96, 80))
    with ManagementClient(server.grpc_management_address, server.keys.management, ca_file=ca,
                          server_name=SERVICE) as management:  # fmt: skip
        assert [m["modelName"] for m in management.list_models()] == ["liver"]


def test_the_trainer_reaches_every_replica_by_ip_checking_the_services_name(tls_liver):
    """PodsManagement dials each replica by its IP address: the certificate names the Service, so the client
    checks that name (the target's host), not the address."""
    server, ca = tls_liver
    port = server.ports.grpc_management
    resolved = [(2, 1, 6, "", ("127.0.0.1", port))]
    with PodsManagement.from_dns(f"dns:///{SERVICE}:{port}", server.keys.management, ca_file=ca,
                                 resolve=lambda host, port, type: resolved) as pods:  # fmt: skip
        assert pods.describe("liver")[0]["modelVersion"] == "1"


def _refused(address: str, key: str, **tls) -> None:
    with InferenceClient(address, key, timeout=10, retries=0, **tls) as client:
        with pytest.raises(ServiceUnavailable, match="is unavailable"):
            client.ping()
        assert client.health(5) == (False, "unavailable")


def test_a_plaintext_client_is_refused(tls_liver):
    server, _ = tls_liver
    _refused(server.grpc_inference_address, server.keys.inference)
    with ManagementClient(server.grpc_management_address, server.keys.management, timeout=10) as management:
        with pytest.raises(ServiceUnavailable):
            management.list_models()


def test_a_client_trusting_another_ca_is_refused(tls_liver, tmp_path):
    server, _ = tls_liver
    other = create_ca(tmp_path, "another-ca")
    _refused(server.grpc_inference_address, server.keys.inference, ca_file=other.cert, server_name=SERVICE)


def test_a_certificate_for_another_name_is_refused(tls_liver):
    server, ca = tls_liver
    # the address's own host (127.0.0.1) is not in the certificate, nor is another organ's Service
    _refused(server.grpc_inference_address, server.keys.inference, ca_file=ca)
    _refused(
        server.grpc_inference_address, server.keys.inference, ca_file=ca, server_name="torchserve-pods-cells"
    )


def test_a_missing_ca_file_is_named_with_its_setting(tmp_path):
    with pytest.raises(ServiceUnavailable, match="MEDSEG_ORGAN_TLS_CA_FILE"):
        InferenceClient("127.0.0.1:1", ca_file=tmp_path / "ca.crt")
