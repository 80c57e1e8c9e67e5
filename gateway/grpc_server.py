"""The medseg.v1 gRPC edge over the same DataPlane and Clinic as HTTP.

`create_server(address, dataplane, session_factory, clinic=...) -> (server, port)`: Segmentation here, the
clinical loop's services (Models, Evaluations, Feedback, History, Training) from gateway/grpc_clinic.py; the
health service and reflection are registered for all of them. Errors are mapped once, in
`ErrorMappingInterceptor`: our transport-neutral errors become their status codes, anything
else INTERNAL with a generic message (logged here).
The API key comes in metadata `authorization: Bearer <key>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from contextlib import AbstractContextManager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from medseg.v1 import segmentation_pb2 as pb
from medseg.v1 import segmentation_pb2_grpc as pb_grpc

from common.errors import InvalidInput, MedSegError
from common.settings import get_settings
from gateway import metrics
from gateway.access import ACCESS
from gateway.grpc_clinic import SERVICES as CLINIC_SERVICES
from gateway.grpc_clinic import ClinicEdge, add_clinic_servicers
from gateway.service import DataPlane, history
from gateway.service.clinic import Clinic
from gateway.service.dataplane import Upload

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name  # "medseg.v1.Segmentation"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _status(exc: MedSegError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Parses the request (malformed → INVALID_ARGUMENT), maps MedSegError → its status code; any other
    exception → INTERNAL without internals."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, handler_call_details.method
        deserialize = handler.request_deserializer

        def guarded(raw, context):
            try:
                request = _parse(deserialize, raw, method)
                response = inner(request, context)
            except MedSegError as exc:
                metrics.count_grpc(method, exc.grpc_code, exc.code)
                if exc.http_status >= 500:
                    logger.warning("%s %s: %s", method, exc.code, exc.message)
                context.set_trailing_metadata((("medseg-error-code", exc.code),))
                context.abort(_status(exc), exc.message)
            except Exception:
                metrics.count_grpc(method, "INTERNAL", "internal")
                logger.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway logged the details")
            metrics.count_grpc(method, "OK")
            return response

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=None,  # parsed in `guarded`: a malformed request is the caller's mistake
            response_serializer=handler.response_serializer,
        )


def _parse(deserialize, raw: bytes, method: str):
    """The request message from its bytes; InvalidInput when they are not that message (grpc's own
    deserialization failure would be an INTERNAL "Exception deserializing request!")."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception as exc:  # protobuf's DecodeError (or anything a corrupt message makes it raise)
        raise InvalidInput(f"malformed request for {method}: {exc}", code="malformed_request") from exc


def _model(m) -> pb.ModelRef:
    return pb.ModelRef(name=m.name, version=m.version)


class SegmentationServicer(pb_grpc.SegmentationServicer):
    """ListOrgans, Segment and Evaluate; each admits the caller by its entry of the access table."""

    def __init__(self, edge: ClinicEdge):
        self.edge, self.clinic, self.dataplane = edge, edge.clinic, edge.clinic.dataplane

    def ListOrgans(self, request, context):
        self.edge.admit(context, ACCESS["organs.list"])
        return pb.ListOrgansResponse(
            organs=[
                pb.Organ(
                    name=s.name,
                    display_name=s.display_name,
                    modality=s.modality,
                    label=s.label,
                    model=_model(s.model),
                    default_threshold=s.default_threshold,
                    ready=s.ready,
                )
                for s in self.dataplane.list_organs()
            ]
        )

    def Segment(self, request, context):
        with self.edge.call(context, ACCESS["segment"]) as (session, who):
            patient_id = request.patient_id if request.HasField("patient_id") and request.patient_id else None
            record = history.segment(  # recorded like HTTP's: who, stability, thumbnail
                session,
                self.dataplane,
                who,
                request.organ,
                request.image,
                request.filename or "upload",
                patient_id,
                doubtful_below=self.clinic.settings.stability_doubtful_below,
            )
        r = record.result
        return pb.SegmentResponse(
            id=r.id,
            organ=r.organ,
            model=_model(r.model),
            width=r.width,
            height=r.height,
            default_threshold=r.default_threshold,
            probability_png=r.probability_png,
            masks=[pb.Mask(threshold=m.threshold, area_px=m.area_px, mask_png=m.mask_png) for m in r.masks],
            stability=record.stability,
            doubtful=record.doubtful,
            suggested_threshold=record.suggested_threshold,
        )

    def Evaluate(self, request, context):
        self.edge.admit(context, ACCESS["evaluate"])
        r = self.dataplane.evaluate(
            request.organ,
            [Upload(i.filename or f"image-{n}", i.image) for n, i in enumerate(request.images)],
            [Upload(i.filename or f"label-{n}", i.image) for n, i in enumerate(request.labels)],
        )
        return pb.EvaluateResponse(
            organ=r.organ,
            model=_model(r.model),
            threshold=r.threshold,
            images=[pb.ImageScore(**vars(s)) for s in r.images],
            mean_dice=r.mean_dice,
            mean_iou=r.mean_iou,
            per_threshold=[pb.ThresholdScore(**vars(t)) for t in r.per_threshold],
        )


def create_server(
    address: str,
    dataplane: DataPlane,
    session_factory: Callable[[], AbstractContextManager],
    *,
    clinic: Clinic | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Build (not start) the gRPC server; `address` may use port 0, the bound port is returned.
    `clinic`: the HTTP app's (`app.state.clinic`), so both edges share one model directory and one set of
    training workers; without it, one is built over `dataplane` (a gRPC-only gateway, tests)."""
    clinic = clinic or Clinic(dataplane, get_settings())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="medseg-grpc"),
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    edge = ClinicEdge(clinic, session_factory)
    pb_grpc.add_SegmentationServicer_to_server(SegmentationServicer(edge), server)
    add_clinic_servicers(server, edge)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME, *CLINIC_SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, *CLINIC_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind the gRPC server to {address}")
    return server, port
