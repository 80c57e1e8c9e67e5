"""Real TorchServe organ servers over gRPC: predict, errors, token auth, registration, batching, stop."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.errors import InvalidInput, MedSegError, NotFound
from common.launcher import OrganServer, free_ports, server_dir, stop_from_state
from common.torchserve_client import InferenceClient, ManagementClient
from services.preprocess import forward, prepare, restore
from services.spec import SERVICES_DIR, load_organ_spec
from tests.data import SHARED_DATA
from tests.fixtures.torchserve import build_test_mar

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = SHARED_DATA
LIVER_SLICE = DATA / "liver" / "train" / "000.png"
TIMEOUT = 120  # s per call: the 2-core test machine also runs training


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} missing (../shared/data)")
    return path


def png_size(body: bytes) -> tuple[tuple[int, int], str]:
    im = Image.open(io.BytesIO(body))
    assert im.format == "PNG"
    return im.size, im.mode


@pytest.fixture
def liver_inference(torchserve_liver):
    with InferenceClient(torchserve_liver.grpc_inference_address, torchserve_liver.inference_key) as client:
        yield client


@pytest.fixture
def liver_management(torchserve_liver):
    with ManagementClient(
        torchserve_liver.grpc_management_address, torchserve_liver.management_key
    ) as client:
        yield client


def test_predict_real_liver_slice(torchserve_liver, liver_inference):
    assert liver_inference.ping() == "Healthy"
    body = liver_inference.predict(
        torchserve_liver.model_name, shared(LIVER_SLICE).read_bytes(), timeout=TIMEOUT
    )
    assert png_size(body) == ((512, 512), "L")


def test_corrupt_image_gets_a_clear_error_and_the_server_keeps_answering(torchserve_liver, liver_inference):
    data = shared(LIVER_SLICE).read_bytes()
    with pytest.raises(InvalidInput, match="corrupt or truncated PNG"):
        liver_inference.predict(torchserve_liver.model_name, data[: len(data) // 3], timeout=TIMEOUT)
    with pytest.raises(InvalidInput, match="unrecognised image format"):
        liver_inference.predict(torchserve_liver.model_name, b"%PDF-1.4 not an image", timeout=TIMEOUT)
    assert png_size(liver_inference.predict(torchserve_liver.model_name, data, timeout=TIMEOUT))[0] == (
        512,
        512,
    )


def test_unknown_model_is_not_found(liver_inference):
    with pytest.raises(NotFound):
        liver_inference.predict("no-such-model", b"x", timeout=TIMEOUT)


def test_token_authorization_is_on(torchserve_liver):
    with InferenceClient(torchserve_liver.grpc_inference_address, "wrong-key") as client:
        with pytest.raises(MedSegError, match="refused our token") as info:
            client.ping()
    assert info.value.code == "organ_auth"
    # the inference key does not open the management API
    with ManagementClient(torchserve_liver.grpc_management_address, torchserve_liver.inference_key) as client:
        with pytest.raises(MedSegError, match="refused our token"):
            client.list_models()


def test_cells_tile(torchserve_cells):
    tile = next(iter(sorted(shared(DATA / "monuseg" / "train" / "images").glob("*.png"))))
    crop = np.asarray(Image.open(tile))[100:300, 200:430]  # 200×230: exercises padding to a multiple of 16
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    with InferenceClient(torchserve_cells.grpc_inference_address, torchserve_cells.inference_key) as client:
        body = client.predict(torchserve_cells.model_name, buf.getvalue(), timeout=TIMEOUT)
    assert png_size(body) == ((230, 200), "L")


def test_a_sliding_window_spec_is_served_through_windows(torchserve_cells):
    """A network that sees 31 px of context answers differently per window near window edges, so the
    served map tells whether the worker slid the spec's 256² windows (with its packed services/) or not."""
    from trainer.package import build_mar

    torch.manual_seed(1)
    net = torch.nn.Conv2d(3, 1, 31, padding=15).eval()
    torch.nn.init.normal_(net.weight, std=0.05)
    store, name = torchserve_cells.model_store, "cells-context"
    scripted = store / f".{name}.pt"
    torch.jit.script(net).save(str(scripted))
    whole = load_organ_spec("cells").single_pass()
    spec = whole.with_inference("sliding", 256, 0.25, tta="none")
    build_mar(scripted, "cells", spec, store, name, "1")
    tile = next(iter(sorted(shared(DATA / "monuseg" / "train" / "images").glob("*.png"))))
    crop = np.asarray(Image.open(tile).convert("RGB"))[100:400, 200:630]  # 300×430: six windows
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    x, how = prepare(crop.astype(np.float32) / 255.0, spec)
    with torch.inference_mode():
        sliding, in_one = (restore(torch.sigmoid(forward(net, x, s)), how) * 255 for s in (spec, whole))
    assert (sliding - in_one).abs().max() > 10  # the two ways differ where it shows
    with ManagementClient(
        torchserve_cells.grpc_management_address, torchserve_cells.management_key
    ) as management:
        management.register(f"{name}.mar", name, version="1")
        try:
            with InferenceClient(
                torchserve_cells.grpc_inference_address, torchserve_cells.inference_key
            ) as client:
                body = client.predict(name, buf.getvalue(), timeout=TIMEOUT)
        finally:
            management.unregister(name, "1")
    served = np.asarray(Image.open(io.BytesIO(body)), dtype=int)
    assert served.shape == (300, 430)
    np.testing.assert_allclose(served, sliding.round().numpy().astype(int), atol=1)


def test_register_second_version_and_make_it_default(torchserve_liver, liver_inference, liver_management):
    name = torchserve_liver.model_name
    build_test_mar("liver", torchserve_liver.model_store, "liver-v2", "2")
    try:
        message = liver_management.register("liver-v2.mar", name, version="2", set_default=True)
        assert "2" in message
        versions = {d["modelVersion"] for d in liver_management.describe(name, "all")}
        assert versions == {"1", "2"}
        assert liver_management.describe(name)[0]["modelVersion"] == "2"
        body = liver_inference.predict(name, shared(LIVER_SLICE).read_bytes(), version="2", timeout=TIMEOUT)
        assert png_size(body)[0] == (512, 512)
        assert {m["modelName"] for m in liver_management.list_models()} == {name}
    finally:
        liver_management.set_default(name, "1")
        liver_management.unregister(name, "2")
    assert {d["modelVersion"] for d in liver_management.describe(name, "all")} == {"1"}


class _MarHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files like an S3 bucket answers a presigned GET (query string ignored)."""

    def translate_path(self, path):
        return super().translate_path(path.split("?", 1)[0])

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def object_store_like(tmp_path):
    """A local HTTP server with a `medseg-models` bucket folder, on a free port."""
    bucket = tmp_path / "medseg-models"
    bucket.mkdir()

    def handler(*args, **kw):
        return _MarHandler(*args, directory=str(tmp_path), **kw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield bucket, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_register_from_a_presigned_style_url(
    torchserve_liver, liver_inference, liver_management, object_store_like
):
    bucket, base = object_store_like
    build_test_mar("liver", bucket, "liver-3", "3")
    url = f"{base}/medseg-models/liver-3.mar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123"
    name = torchserve_liver.model_name
    try:
        liver_management.register(url, name)
        body = liver_inference.predict(name, shared(LIVER_SLICE).read_bytes(), version="3", timeout=TIMEOUT)
        assert png_size(body)[0] == (512, 512)
        assert liver_management.describe(name)[0]["modelVersion"] == "1"  # not made default
    finally:
        liver_management.unregister(name, "3")
    shutil.copy(bucket / "liver-3.mar", bucket.parent / "liver-3.mar")
    with pytest.raises(NotFound, match="does not match any allowed URL"):
        liver_management.register(f"{base}/liver-3.mar", name)  # outside the allowed bucket
    with pytest.raises(InvalidInput, match="Failed to download") as info:
        liver_management.register(f"{base}/medseg-models/absent.mar?X-Amz-Signature=secret", name)
    assert "secret" not in str(info.value)


def test_bad_image_batched_with_a_good_one_fails_only_itself(tmp_path, torchserve_liver, liver_management):
    """A model with batchSize 2 and a long batch delay: two concurrent requests surely share one batch."""
    services = tmp_path / "services"
    shutil.copytree(SERVICES_DIR, services, ignore=shutil.ignore_patterns("__pycache__"))
    config_path = services / "liver" / "model-config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update(batchSize=2, maxBatchDelay=30000)
    config_path.write_text(yaml.safe_dump(config))
    build_test_mar("liver", torchserve_liver.model_store, "liver-batch", "1", services_dir=services)
    liver_management.register("liver-batch.mar", "liver-batch")
    try:
        assert liver_management.describe("liver-batch")[0]["batchSize"] == 2
        from torchserve_grpc import inference_pb2, inference_pb2_grpc

        good, bad = shared(LIVER_SLICE).read_bytes(), b"\x89PNG\r\n\x1a\n" + b"\0" * 40
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def call(label: str, data: bytes) -> None:
            with grpc.insecure_channel(torchserve_liver.grpc_inference_address) as channel:
                stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
                request = inference_pb2.PredictionsRequest(model_name="liver-batch", input={"data": data})
                metadata = (("authorization", f"Bearer {torchserve_liver.inference_key}"),)
                barrier.wait()
                try:
                    results[label] = stub.Predictions(request, timeout=TIMEOUT, metadata=metadata).prediction
                except grpc.RpcError as exc:
                    results[label] = exc

        threads = [threading.Thread(target=call, args=a) for a in (("good", good), ("bad", bad))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert isinstance(results["good"], bytes) and png_size(results["good"])[0] == (512, 512)
        # in a mixed batch the gRPC frontend drops per-request status codes: OK + the handler's JSON error
        assert isinstance(results["bad"], bytes), results["bad"]
        error = json.loads(results["bad"])["error"]
        assert error["code"] == "invalid_input" and "corrupt or truncated PNG" in error["message"]
    finally:
        liver_management.unregister("liver-batch")


def test_launcher_stops_exactly_its_process_group(tmp_path):
    """An empty server (no models): start, answer, then stop it from the state dir as `stack down` does."""
    store = tmp_path / "store"
    store.mkdir()
    server = OrganServer("liver", tmp_path / "state", store, ports=free_ports())
    server.start(timeout=300)
    try:
        pgid = server.pid
        members = [p for p in _group_members(pgid)]
        assert len(members) >= 2  # the torchserve launcher and the Java frontend
        with InferenceClient(server.grpc_inference_address, server.keys.inference) as client:
            assert client.ping() == "Healthy"
        assert (server_dir(tmp_path / "state", "liver") / "server.pid").read_text().strip() == str(pgid)
        assert stop_from_state(tmp_path / "state", "liver", grace=30)
        server.process.wait(timeout=30)
        assert _group_members(pgid) == []
        assert not stop_from_state(tmp_path / "state", "liver")  # nothing left to stop
    finally:
        server.stop()


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_key_file_is_private(torchserve_liver):
    mode = os.stat(torchserve_liver.server.key_file).st_mode & 0o777
    assert mode == 0o600


def test_keys_outlive_a_long_running_server(torchserve_liver):
    # the gateway never renews TorchServe's keys: they must not expire while the server runs (30 days was
    # the old setting: every segmentation would have become a 503 on day 31)
    from datetime import UTC, datetime, timedelta

    raw = json.loads(Path(torchserve_liver.server.key_file).read_text())
    for kind in ("inference", "management"):
        expires = datetime.fromisoformat(raw[kind]["expiration time"].replace("Z", "+00:00"))
        assert expires > datetime.now(UTC) + timedelta(days=5 * 365), (kind, expires)
