"""The medseg.v1 gRPC edge over a DataPlane with fake organ servers: contract shape, status codes from the
error interceptor, health and reflection."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from medseg.v1 import segmentation_pb2 as pb
from PIL import Image

from common.errors import ServiceUnavailable
from gateway.service.dataplane import DataPlane
from gateway.service.organs import OrganRegistry
from services.spec import SERVICES_DIR
from tests.data import LIVER_SLICE
from tests.gateway.fakes import FakeClient, FakeStore, png


def make_plane(tmp_path, clients=None) -> DataPlane:
    registry = OrganRegistry(SERVICES_DIR, tmp_path)
    return DataPlane(
        registry,
        clients or {n: FakeClient() for n in registry.names()},
        FakeStore(),
        results_bucket="results",
        record_segmentation=lambda session, record: None,
        max_upload_bytes=2_000_000,
        max_image_pixels=4_000_000,
    )


def auth(raw_key: str):
    return (("authorization", f"Bearer {raw_key}"),)


@pytest.fixture
def stub(tmp_path, grpc_stub_for):
    return grpc_stub_for(make_plane(tmp_path))


def test_segment_contract(stub, api_keys):
    with open(LIVER_SLICE, "rb") as fh:
        request = pb.SegmentRequest(organ="liver", image=fh.read(), filename="000.png", patient_id="P-1")
    response = stub.Segment(request, metadata=auth(api_keys["segment"]), timeout=30)
    assert (response.width, response.height, response.organ) == (512, 512, "liver")
    assert [round(m.threshold, 1) for m in response.masks] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    for blob in [response.probability_png, *(m.mask_png for m in response.masks)]:
        assert Image.open(io.BytesIO(blob)).size == (512, 512)
    assert response.model.name == "liver" and response.id


def test_segment_answers_the_masks_asked_for(stub, api_keys):
    image = png(np.zeros((40, 64), np.uint8))

    def segment(**fields):
        request = pb.SegmentRequest(organ="liver", image=image, filename="a.png", **fields)
        return stub.Segment(request, metadata=auth(api_keys["segment"]), timeout=30)

    everything = segment()
    assert [round(m.threshold, 1) for m in everything.masks] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert [round(m.threshold, 1) for m in segment(masks="all").masks] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert list(segment(masks="none").masks) == []
    asked = segment(masks="0.6,0.4")
    assert [round(m.threshold, 1) for m in asked.masks] == [0.4, 0.6]
    by_threshold = {round(m.threshold, 1): m for m in everything.masks}
    assert all(m == by_threshold[round(m.threshold, 1)] for m in asked.masks)
    assert (asked.stability, asked.doubtful) == (everything.stability, everything.doubtful)
    with pytest.raises(grpc.RpcError) as info:
        segment(masks="0.45")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["medseg-error-code"] == "invalid_masks"


def test_a_truncated_png_is_invalid_argument_naming_the_file(tmp_path, grpc_stub_for, api_keys):
    organ = FakeClient()
    stub = grpc_stub_for(make_plane(tmp_path, {"liver": organ, "cells": FakeClient()}))
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    request = pb.SegmentRequest(organ="liver", image=png(noise)[:-300], filename="slice-17.png")
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(request, metadata=auth(api_keys["segment"]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["medseg-error-code"] == "invalid_image"
    assert "slice-17.png" in info.value.details() and organ.calls == 1  # refused by the organ server


@pytest.mark.parametrize(
    "organ, image, key, code",
    [
        ("liver", None, None, grpc.StatusCode.UNAUTHENTICATED),
        ("liver", None, "garbage", grpc.StatusCode.UNAUTHENTICATED),
        ("liver", None, "evaluate", grpc.StatusCode.PERMISSION_DENIED),
        ("kidney", None, "segment", grpc.StatusCode.NOT_FOUND),
        ("Liver!", None, "segment", grpc.StatusCode.INVALID_ARGUMENT),
        ("", None, "segment", grpc.StatusCode.INVALID_ARGUMENT),
        ("liver", b"", "segment", grpc.StatusCode.INVALID_ARGUMENT),
        ("liver", b"GIF89a....", "segment", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_map_to_status_codes(stub, api_keys, organ, image, key, code):
    image = png(np.zeros((32, 32), np.uint8)) if image is None else image
    metadata = () if key is None else auth(api_keys.get(key, key))
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(
            pb.SegmentRequest(organ=organ, image=image, filename="a.png"), metadata=metadata, timeout=30
        )
    assert info.value.code() == code
    assert "Traceback" not in info.value.details()


def test_organ_down_is_unavailable_other_organ_answers(tmp_path, grpc_stub_for, api_keys):
    stub = grpc_stub_for(
        make_plane(
            tmp_path, {"liver": FakeClient(error=ServiceUnavailable("liver down")), "cells": FakeClient()}
        )
    )
    rgb = png(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(
            pb.SegmentRequest(organ="liver", image=rgb), metadata=auth(api_keys["segment"]), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    ok = stub.Segment(
        pb.SegmentRequest(organ="cells", image=rgb), metadata=auth(api_keys["segment"]), timeout=30
    )
    assert (ok.width, ok.height) == (32, 32)
    listed = stub.ListOrgans(pb.ListOrgansRequest(), metadata=auth(api_keys["both"])).organs
    organs = {o.name: o.ready for o in listed}
    assert organs == {"liver": False, "cells": True, "hippocampus": False}  # no client for it here
    kinds = {o.name: (list(o.labels), o.dimensions) for o in listed}
    assert kinds["liver"] == (["liver"], 2) and kinds["hippocampus"] == (["anterior", "posterior"], 3)


def test_unexpected_error_is_internal_without_details(tmp_path, grpc_stub_for, api_keys):
    stub = grpc_stub_for(
        make_plane(tmp_path, {"liver": FakeClient(error=KeyError("secret internals")), "cells": FakeClient()})
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(
            pb.SegmentRequest(organ="liver", image=png(np.zeros((32, 32), np.uint8))),
            metadata=auth(api_keys["segment"]),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL and "secret" not in info.value.details()


def test_message_size_limit_is_deliberate(tmp_path, grpc_stub_for, api_keys):
    stub = grpc_stub_for(make_plane(tmp_path), max_message_bytes=100_000)
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(
            pb.SegmentRequest(organ="liver", image=b"x" * 200_000),
            metadata=auth(api_keys["segment"]),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_evaluate(stub, api_keys):
    image = png(np.zeros((32, 32), np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 24:] = 255
    response = stub.Evaluate(
        pb.EvaluateRequest(
            organ="liver",
            images=[pb.LabelledImage(filename="a.png", image=image)],
            labels=[pb.LabelledImage(filename="a_mask.png", image=png(mask))],
        ),
        metadata=auth(api_keys["evaluate"]),
        timeout=30,
    )
    assert response.mean_dice == pytest.approx(2 / 3) and len(response.per_threshold) == 7


def test_health_and_reflection(stub):
    channel = stub.channel
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="medseg.v1.Segmentation")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    clinic = {f"medseg.v1.{s}" for s in ("Models", "Evaluations", "Feedback", "History", "Training")}
    assert {"medseg.v1.Segmentation", "grpc.health.v1.Health", *clinic} <= names
    for service in clinic:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_a_2d_image_for_a_3d_organ_is_invalid_argument_naming_the_studies(tmp_path, grpc_stub_for, api_keys):
    stub = grpc_stub_for(make_plane(tmp_path))
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(
            pb.SegmentRequest(organ="hippocampus", image=png(np.zeros((32, 32), np.uint8))),
            metadata=auth(api_keys["segment"]),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is 3-D" in info.value.details() and "/api/v1/studies" in info.value.details()
