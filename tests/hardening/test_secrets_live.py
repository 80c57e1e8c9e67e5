"""Secrets never reach the logs of a real `medseg serve` (issue 8): the caller's API key (HTTP header and gRPC
metadata), the object store's credentials and the organ servers' inference keys, through successful calls,
refused keys, bad input and an organ server answering errors. The in-process variant with people's passwords,
sessions and CSRF tokens is tests/hardening/test_security.py."""

from __future__ import annotations

import grpc
import pytest

from tests.data import LIVER_SLICE
from tests.hardening.live_gateway import LiveGateway

pytestmark = pytest.mark.integration


def test_no_secret_in_a_live_gateways_log(stack_settings, objectstore, tmp_path):
    from medseg.v1 import segmentation_pb2, segmentation_pb2_grpc

    if not LIVER_SLICE.is_file():
        pytest.skip(f"shared data not found: {LIVER_SLICE}")
    settings = stack_settings.model_copy(update={"state_dir": tmp_path / "state"})
    live = LiveGateway.create(settings, tmp_path)
    live.start()
    try:
        image = LIVER_SLICE.read_bytes()
        with live.client() as http:
            ok = http.post("/api/v1/segment", data={"organ": "liver", "patient_id": "P-1"},
                           files={"file": ("s.png", image, "image/png")})  # fmt: skip
            assert ok.status_code == 200, ok.text
            bad = http.post("/api/v1/segment", data={"organ": "liver"}, files={"file": ("x.png", b"junk")})
            assert bad.status_code == 400
            wrong = http.get("/api/v1/organs", headers={"Authorization": f"Bearer {live.api_key}x"})
            assert wrong.status_code == 401
        with grpc.insecure_channel(live.grpc_address) as channel:
            stub = segmentation_pb2_grpc.SegmentationStub(channel)
            request = segmentation_pb2.SegmentRequest(organ="liver", image=image, filename="s.png")
            stub.Segment(request, metadata=[("authorization", f"Bearer {live.api_key}")], timeout=120)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Segment(request, metadata=[("authorization", f"Bearer {live.api_key}x")], timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        live.close()

    log = live.log_path.read_text()
    assert "POST /api/v1/segment" in log, "the access log was not written"  # the log is the real one
    secrets = {
        "API key": live.api_key,
        "S3 access key": settings.s3_access_key,
        "S3 secret key": settings.s3_secret_key,
        **{f"{organ} inference key": key for organ, key in settings.organ_inference_keys.items()},
    }
    assert all(len(secret) >= 8 for secret in secrets.values()), "a secret too short to search for"
    for what, secret in secrets.items():
        assert secret not in log, f"{what} is in the gateway's log"
