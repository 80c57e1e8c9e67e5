"""A fresh cluster boots, without a cluster: the prod overlay rendered, and the containers that make a
segmentation possible started as local processes with the rendered command, args and environment
(tests/k8s/localpods.py), the images' files from the repository, against an empty object store (the tests'
SeaweedFS) and a new database (SQLite):

1. the seed Job fills the empty models bucket with the shipped archives and pins each organ's version;
2. each organ pod's init container pulls the pinned version, its server starts from it and serves that
   version (every organ: the gateway's /readyz asks them all), its gRPC over TLS only, with the certificate
   its Certificate describes (a plaintext client is refused);
3. the gateway's migrations (its init container) and the gateway start: /readyz is 200, it records the
   shipped versions in its registry (read from the bucket), finds the organ Deployments already serving
   them (a stand-in Kubernetes API serves the rendered objects and records any patch: none, nothing
   rolls), and a liver segmentation answers, by the pinned version, over TLS verified against the CA;
4. the kubelet's stop of a liver replica mid-request (SIGTERM while its worker runs a volume chunk sent by
   the gateway's client over both replicas): the request is answered in full and the process exits within
   the pod's grace period. The JVM's own stop answers the request its worker runs in most stops; in 3 of 17
   stops under load (this test and a standalone loop, 2026-12-02) that answer was lost and the caller got
   UNAVAILABLE, which the client retries on another replica (common/torchserve_client.py), as requests
   still queued at SIGTERM always are: so the request is answered either way, which is what is asserted.

What stands in for the cluster, and nothing else: service names → local addresses (and, since an address
list names no host, the gateway is told which name each organ server's certificate must carry: the
headless Service's, as its DNS target says in the cluster), the containers' ports → free ones, 0.0.0.0 →
127.0.0.1, the database URL → SQLite, the Kubernetes API → a recorder serving the rendered objects,
cert-manager → a throwaway CA (Secret medseg-internal-ca) issuing each Certificate of it as rendered.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from common.errors import MedSegError, ServiceUnavailable
from common.launcher import free_port
from common.model_store import mar_manifest, read_pin
from common.torchserve_client import InferenceClient, ManagementClient
from common.volume_inference import NPY_MAGIC
from services.imaging import decode_npy, encode_npy
from services.spec import organ_dirs
from tests.api.conftest import png
from tests.fixtures.torchserve import _require_runtime
from tests.k8s.conftest import K8S, by_kind, render
from tests.k8s.localpods import REPO, LocalPod
from tools.private_ca import create_ca, issue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORGANS = sorted(organ_dirs())
LIVER_REPLICAS = 2
SHIPPED = {
    organ: str(mar_manifest(REPO / "model-store" / f"{organ}.mar")["modelVersion"]) for organ in ORGANS
}


class FakeKubernetes(ThreadingHTTPServer):
    """The API server, as far as the gateway calls it: the rendered Deployments and CronJobs to GET, every
    PATCH recorded (and answered with the object), no Jobs."""

    def __init__(self, objects: list[dict]):
        self.objects = {("deployments", n): o for n, o in by_kind(objects, "Deployment").items()}
        self.objects |= {("cronjobs", n): o for n, o in by_kind(objects, "CronJob").items()}
        self.patches: list[tuple[str, dict]] = []
        self.reads = 0
        super().__init__(("127.0.0.1", 0), _KubernetesHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _KubernetesHandler(BaseHTTPRequestHandler):
    server: FakeKubernetes

    def _object(self):
        parts = urlsplit(self.path).path.strip("/").split("/")  # apis/apps/v1/namespaces/medseg/<kind>/<name>
        return (parts[-2], parts[-1]) if len(parts) >= 7 else (parts[-1], None)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.server.reads += 1
        found = self.server.objects.get(self._object())
        self._answer(200, found) if found else self._answer(404, {"message": "not found"})

    def do_PATCH(self):  # noqa: N802
        patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self._object()
        self.server.patches.append((key[1], patch))
        self._answer(200, self.server.objects.get(key, {}))

    def log_message(self, *args):  # quiet
        pass


def _wait(condition, what: str, processes, timeout: float = 300.0):
    """Poll `condition` until it returns a truthy value; fail early naming the log of a process that died."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"{what}: {process.args[:3]} exited {process.returncode}:\n"
                            f"{process.log.read_text()[-4000:]}")  # fmt: skip
        try:
            if result := condition():
                return result
        except (OSError, httpx.HTTPError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def _ping(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as reply:
        return json.loads(reply.read())["status"] == "Healthy"


def cert_manager(objects: list[dict], root) -> dict[str, dict[str, str]]:
    """What cert-manager would write: the internal CA's Secret (its ca.crt) and, for every Certificate that
    CA issues, a Secret with tls.crt and tls.key for the Certificate's DNS names (PKCS#8 keys)."""
    ca = create_ca(root / "internal-ca", "medseg-internal-ca")
    secrets = {"medseg-internal-ca": {"ca.crt": ca.cert.read_text()}}
    for name, certificate in by_kind(objects, "Certificate").items():
        spec = certificate["spec"]
        if spec.get("isCA") or spec["issuerRef"]["name"] != "medseg-internal-ca":
            continue
        pair = issue(ca, root / name, spec["dnsNames"][0], [f"DNS:{n}" for n in spec["dnsNames"]])
        secrets[spec["secretName"]] = {"tls.crt": pair.cert.read_text(), "tls.key": pair.key.read_text()}
    return secrets


def _worker_received(log) -> int:
    """Requests the server's Python worker has taken up so far (its log line, relayed by the frontend)."""
    return log.read_text(errors="replace").count("Backend received inference")


def test_a_fresh_cluster_seeds_serves_the_pinned_version_and_drains(clean_buckets, s3_settings, tmp_path):
    _require_runtime()
    objects = render(K8S / "overlays" / "prod")
    store = clean_buckets
    assert not store.list(store.buckets.models), "the models bucket of a fresh cluster is empty"
    endpoint = s3_settings.s3_endpoint
    # cert-manager's internal CA and the certificates it issues: the organ servers' gRPC TLS (S3 is plain
    # HTTP here, below, so the store's certificate and the CA in the S3 clients go unused)
    issued = cert_manager(objects, tmp_path / "cert-manager")
    ca_file = tmp_path / "internal-ca.crt"
    ca_file.write_text(issued["medseg-internal-ca"]["ca.crt"])
    secrets = issued | {
        "medseg-s3": {"access-key": s3_settings.s3_access_key, "secret-key": s3_settings.s3_secret_key},
        "medseg-postgres": {"password": "not-used-sqlite-stands-in"},
        "medseg-db-ca": {"ca.crt": "not-used-sqlite-stands-in"},  # CloudNativePG's CA, for the gateway
    }
    s3_rewrites = {"minio.medseg.svc:9000": endpoint}
    s3_overrides = {"MEDSEG_S3_SECURE": "false"}  # the test's SeaweedFS speaks plain HTTP
    pods: list[LocalPod] = []
    api = FakeKubernetes(objects)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        # 1. the seed Job, in an empty bucket
        seed_job = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == "medseg-seed")
        seed = LocalPod(seed_job, objects, tmp_path / "seed", secrets=secrets, rewrites=s3_rewrites,
                        overrides=s3_overrides)  # fmt: skip
        pods.append(seed)
        (container,) = seed.spec["containers"]
        done = seed.run(container["name"])
        assert done.returncode == 0, done.stdout
        for organ in ORGANS:
            assert store.exists(store.buckets.models, f"{organ}/{organ}-{SHIPPED[organ]}.mar")
            assert read_pin(store, organ) == {"default": SHIPPED[organ], "also_serve": []}
        again = seed.run(container["name"])  # idempotent: a re-applied Job changes nothing
        assert again.returncode == 0 and '"pinned_now": true' not in again.stdout, again.stdout

        # 2. the organ pods: the pull step, then TorchServe, each on free ports; liver with two replicas,
        # as a scaled organ is, so that stopping one shows what the gateway's calls see
        replicas = [(organ, i) for organ in ORGANS for i in range(LIVER_REPLICAS if organ == "liver" else 1)]
        organ_ports, servers = {}, {}
        for organ, i in replicas:
            deployment = by_kind(objects, "Deployment")[f"torchserve-{organ}"]
            main = deployment["spec"]["template"]["spec"]["containers"][0]
            ports = {p["name"]: (p["containerPort"], free_port()) for p in main["ports"]}
            organ_ports[organ, i] = {name: local for name, (_, local) in ports.items()}
            exact = {str(c): str(local) for c, local in ports.values()} | {"0.0.0.0": "127.0.0.1"}
            rewrites = s3_rewrites | {f"0.0.0.0:{c}": f"127.0.0.1:{local}" for c, local in ports.values()}
            pod = LocalPod(deployment, objects, tmp_path / f"{organ}-{i}", secrets=secrets, rewrites=rewrites,
                           exact=exact, overrides=s3_overrides)  # fmt: skip
            pods.append(pod)
            pulled = pod.run("pull-model")
            assert pulled.returncode == 0, pulled.stdout
            assert f"pins version {SHIPPED[organ]}" in pulled.stdout
            servers[organ, i] = (pod, pod.start(main["name"]))
        for (organ, i), (_, process) in servers.items():
            ports = organ_ports[organ, i]
            _wait(lambda p=ports: _ping(p["http-inference"]), f"{organ} server {i} ready", [process])
            described = httpx.get(f"http://127.0.0.1:{ports['http-management']}/models/{organ}")
            assert [m["modelVersion"] for m in described.json()] == [SHIPPED[organ]]
        # what the headless Service's name resolves to: every replica (gRPC round_robin over them)
        targets = {
            organ: "ipv4:"
            + ",".join(f"127.0.0.1:{organ_ports[o, i]['grpc-inference']}" for o, i in replicas if o == organ)
            for organ in ORGANS
        }
        # the name the gateway dials, and checks in each organ server's certificate
        gateway_config = next(
            c for n, c in by_kind(objects, "ConfigMap").items() if n.startswith("medseg-gateway-")
        )
        addresses = json.loads(gateway_config["data"]["MEDSEG_ORGAN_ADDRESSES"])
        service_names = {o: a.removeprefix("dns:///").rsplit(":", 1)[0] for o, a in addresses.items()}
        # gRPC speaks TLS, with the certificate the organ's Certificate describes, and nothing else
        for (organ, i), ports in organ_ports.items():
            inference, management = (f"127.0.0.1:{ports[p]}" for p in ("grpc-inference", "grpc-management"))
            tls = {"ca_file": ca_file, "server_name": service_names[organ]}
            with InferenceClient(inference, timeout=10, **tls) as verified:  # gRPC listens after HTTP
                _wait(lambda c=verified: c.health(5)[0], f"{organ} server {i}: gRPC over TLS",
                      [servers[organ, i][1]])  # fmt: skip
            with InferenceClient(inference, timeout=10, retries=0) as plaintext:
                assert plaintext.health(5) == (False, "unavailable"), f"{organ} {i}: inference in clear text"
            with ManagementClient(management, timeout=10) as plaintext, pytest.raises(ServiceUnavailable):
                plaintext.list_models()  # token auth is off in the pods: only TLS refuses it

        # 3. the gateway: migrations (init container), then `medseg serve` from the image
        gateway_deployment = by_kind(objects, "Deployment")["medseg-gateway"]
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("boot-test-token")
        database = f"sqlite:///{tmp_path / 'medseg.db'}"
        organ_rewrites = {f"dns:///torchserve-pods-{organ}:7070": targets[organ] for organ in ORGANS}
        gateway = LocalPod(
            gateway_deployment, objects, tmp_path / "gateway", secrets=secrets,
            rewrites=s3_rewrites | organ_rewrites, exact={"0.0.0.0": "127.0.0.1", "9102": str(metrics_port)},
            overrides=s3_overrides | {
                "MEDSEG_DATABASE_URL": database, "MEDSEG_HTTP_PORT": str(http_port),
                "MEDSEG_GRPC_PORT": str(grpc_port), "MEDSEG_KUBERNETES_API_URL": api.url,
                "MEDSEG_SERVICE_ACCOUNT_DIR": str(account),
                "MEDSEG_ORGAN_TLS_SERVER_NAMES": json.dumps(service_names),
            },
        )  # fmt: skip
        pods.append(gateway)
        for init in gateway.spec.get("initContainers", []):
            migrated = gateway.run(init["name"])
            assert migrated.returncode == 0, migrated.stdout
        server = gateway.start(gateway.spec["containers"][0]["name"])
        base = f"http://127.0.0.1:{http_port}"
        _wait(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, "gateway /readyz", [server])
        # at its start the gateway pins what its registry names: the bucket's pin already does, so the
        # Deployments (which pull `pinned`) are read and left as they are: nothing rolls
        assert api.reads >= len(ORGANS) and api.patches == []
        assert {organ: read_pin(store, organ)["default"] for organ in ORGANS} == SHIPPED

        from gateway.core.db import make_engine, session_scope
        from gateway.security import create_api_key

        engine = make_engine(database)
        with session_scope(engine) as session:  # as `medseg api-key create` does (docs/operations.md)
            key = create_api_key(session, "boot-test", "segment")[1]
        engine.dispose()
        auth = {"Authorization": f"Bearer {key}"}
        listed = httpx.get(f"{base}/api/v1/organs", headers=auth, timeout=10).json()["organs"]
        assert {o["name"]: o["model"]["version"] for o in listed} == SHIPPED  # recorded, never "unknown"
        image = png(np.clip(np.random.default_rng(1).normal(110, 30, (256, 256)), 0, 255).astype(np.uint8))
        reply = httpx.post(
            f"{base}/api/v1/segment", data={"organ": "liver", "masks": "0.5"},
            files={"file": ("slice.png", image, "image/png")}, headers=auth,
            timeout=120,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"]["version"] == SHIPPED["liver"]
        assert [m["threshold"] for m in reply.json()["masks"]] == [0.5]

        # 4. stop a liver pod mid-request, as the kubelet does (its preStop sleep is a wait for the
        # endpoints, not part of the server's stop: the grace period left after it is what the server has)
        chunk = np.random.default_rng(2).integers(-200, 300, (64, 512, 512)).astype(np.int16)
        liver = {i: servers["liver", i] for i in range(LIVER_REPLICAS)}
        received = {i: _worker_received(process.log) for i, (_, process) in liver.items()}

        def predict() -> bytes:
            tls = {"ca_file": ca_file, "server_name": service_names["liver"]}
            with InferenceClient(targets["liver"], None, timeout=300, **tls) as client:  # the gateway's
                return client.predict("liver", encode_npy(chunk), timeout=300, answer_magic=NPY_MAGIC)

        def busy_replica():
            return next((i for i, (_, p) in liver.items() if _worker_received(p.log) > received[i]), None)

        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(predict)
            busy = _wait(lambda: (n := busy_replica()) is not None and str(n),
                         "the chunk reaches a liver worker", [p for _, p in liver.values()])  # fmt: skip
            pod, process = liver[int(busy)]
            main_name = pod.spec["containers"][0]["name"]
            deadline = pod.grace_deadline(main_name)
            in_flight_at_sigterm = not answer.done()
            code = pod.stop(process, deadline)
            try:
                probabilities = decode_npy(answer.result(timeout=300))
            except MedSegError as exc:
                pytest.fail(f"the request in flight at SIGTERM failed: {exc}; the server's log ends:\n"
                            f"{process.log.read_text(errors='replace')[-6000:]}")  # fmt: skip
        assert in_flight_at_sigterm, "the chunk was answered before SIGTERM: nothing was in flight"
        assert probabilities.shape == chunk.shape, "the request in flight at SIGTERM was answered in full"
        assert code is not None, f"killed at the end of the grace period:\n{process.log.read_text()[-3000:]}"
    finally:
        for pod in pods:
            pod.stop_all()
        api.shutdown()
