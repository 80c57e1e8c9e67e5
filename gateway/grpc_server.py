"""The medseg.v1 gRPC server over the same DataPlane and Clinic as HTTP.

`create_server(address, dataplane, session_factory, clinic=...) -> (server, port)` registers every
service's servicer (each RPC lives with its resource: gateway/resources/<resource>/grpc.py), the health
service and reflection. Errors are mapped once, in `ErrorMappingInterceptor`: our transport-neutral errors
become their status codes, anything else INTERNAL with a generic message (logged here).
The API key comes in metadata `authorization: Bearer <key>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from contextlib import AbstractContextManager, contextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from medseg.v1 import clinic_pb2, clinic_pb2_grpc, pacs_pb2, pacs_pb2_grpc, studies_pb2, studies_pb2_grpc
from medseg.v1 import segmentation_pb2 as pb
from medseg.v1 import segmentation_pb2_grpc as pb_grpc

from common.errors import InvalidInput, MedSegError
from common.settings import get_settings
from gateway import metrics
from gateway.resources.evaluations.grpc import EvaluateRpc, Evaluations
from gateway.resources.feedback.grpc import Feedback
from gateway.resources.grpc_edge import Edge
from gateway.resources.models.grpc import Models
from gateway.resources.organs.grpc import OrgansRpc
from gateway.resources.pacs.grpc import Pacs
from gateway.resources.segmentations.grpc import History, SegmentRpc
from gateway.resources.studies.grpc import Studies
from gateway.resources.training.grpc import Training
from gateway.service import DataPlane
from gateway.service.clinic import Clinic

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name  # "medseg.v1.Segmentation"
CLINIC_SERVICES = tuple(
    s.full_name
    for module in (clinic_pb2, studies_pb2, pacs_pb2)
    for s in module.DESCRIPTOR.services_by_name.values()
)  # Models, …, Studies, Pacs
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _status(exc: MedSegError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Parses the request (malformed → INVALID_ARGUMENT), maps MedSegError → its status code; any other
    exception → INTERNAL without internals. Unary calls, server streams (a study's mask in chunks) and client
    streams (a study's files in chunks) alike."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserialize = handler.request_deserializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def guarded(raw, context):
                with _mapped(method, context):
                    response = inner(_parse(deserialize, raw, method), context)
                return response

            return grpc.unary_unary_rpc_method_handler(
                guarded,
                request_deserializer=None,  # parsed in `guarded`: a malformed request is the caller's mistake
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def guarded_stream(raw, context):
                with _mapped(method, context):
                    yield from inner_stream(_parse(deserialize, raw, method), context)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream, request_deserializer=None, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_in = handler.stream_unary

            def guarded_in(raw_iterator, context):
                with _mapped(method, context):
                    parsed = (_parse(deserialize, raw, method) for raw in raw_iterator)
                    response = inner_in(parsed, context)
                return response

            return grpc.stream_unary_rpc_method_handler(
                guarded_in, request_deserializer=None, response_serializer=handler.response_serializer
            )
        return handler


@contextmanager
def _mapped(method: str, context):
    """Our errors → their status code (and the HTTP code in trailing metadata); anything else → INTERNAL."""
    try:
        yield
    except MedSegError as exc:
        metrics.count_grpc(method, exc.grpc_code, exc.code)
        if exc.http_status >= 500:
            logger.warning("%s %s: %s", method, exc.code, exc.message)
        context.set_trailing_metadata((("medseg-error-code", exc.code),))
        context.abort(_status(exc), exc.message)
    except grpc.RpcError:
        raise  # context.abort's own exception, or the client went away
    except Exception:
        metrics.count_grpc(method, "INTERNAL", "internal")
        logger.exception("unhandled error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway logged the details")
    metrics.count_grpc(method, "OK")


def _parse(deserialize, raw: bytes, method: str):
    """The request message from its bytes; InvalidInput when they are not that message (grpc's own
    deserialization failure would be an INTERNAL "Exception deserializing request!")."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception as exc:  # protobuf's DecodeError (or anything a corrupt message makes it raise)
        raise InvalidInput(f"malformed request for {method}: {exc}", code="malformed_request") from exc


class Segmentation(OrgansRpc, SegmentRpc, EvaluateRpc, pb_grpc.SegmentationServicer):
    """medseg.v1.Segmentation, whose RPCs belong to three resources: organs, segmentations, evaluations."""


def _servicers(edge: Edge) -> tuple[tuple[Callable, object], ...]:
    """(add_…_to_server, servicer) of every medseg.v1 service."""
    return (
        (pb_grpc.add_SegmentationServicer_to_server, Segmentation(edge)),
        (clinic_pb2_grpc.add_ModelsServicer_to_server, Models(edge)),
        (clinic_pb2_grpc.add_EvaluationsServicer_to_server, Evaluations(edge)),
        (clinic_pb2_grpc.add_FeedbackServicer_to_server, Feedback(edge)),
        (clinic_pb2_grpc.add_HistoryServicer_to_server, History(edge)),
        (clinic_pb2_grpc.add_TrainingServicer_to_server, Training(edge)),
        (studies_pb2_grpc.add_StudiesServicer_to_server, Studies(edge)),
        (pacs_pb2_grpc.add_PacsServicer_to_server, Pacs(edge)),
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
    for jobs in (clinic.studies, clinic.evaluation_jobs):  # the job workers use this server's database
        if jobs.session_factory is None:
            jobs.session_factory = session_factory
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="medseg-grpc"),
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    for add_to_server, servicer in _servicers(Edge(clinic, session_factory)):
        add_to_server(servicer, server)
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
