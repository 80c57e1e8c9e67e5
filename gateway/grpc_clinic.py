"""The clinical loop over gRPC (protos/medseg/v1/clinic.proto): services Models, Evaluations, Feedback,
History and Training, one RPC per HTTP route.

Each RPC admits the caller by its operation's entry of the access table (gateway/access.py: the same as
HTTP's; over gRPC only API keys, in metadata `authorization: Bearer <key>`), then calls the same operation
as the route. Requests with a body are validated by the route's own schema (`from_message`); answers are the
route's schema carried into the message of the same field names (`to_message`). Errors are mapped by
gateway.grpc_server.ErrorMappingInterceptor, as for Segment and Evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.errors import Forbidden, InvalidInput
from gateway.access import ACCESS
from gateway.main import _validation_message
from gateway.principal import Access, Principal
from gateway.resources.evaluations.schemas import EvaluationSummary
from gateway.resources.feedback.schemas import FeedbackCreate, FeedbackUpdate, ReplyCreate
from gateway.resources.models.schemas import (
    ModelVersionCreate,
    ModelVersionPublic,
    PromoteRequest,
    ReferenceSetRequest,
    RollbackRequest,
)
from gateway.resources.segmentations.schemas import ChoiceRequest
from gateway.resources.shared import RowId
from gateway.resources.training.schemas import TrainingJobCreate
from gateway.security import authorize
from gateway.service import clinic_ops as ops
from gateway.service.clinic import Clinic
from gateway.service.dataplane import Upload

SERVICES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())  # "medseg.v1.Models", …


def _jsonable(value):
    """A schema's dump as protobuf's JSON mapping reads it (timestamps need a zone: SQLite's have none)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def to_message(model: BaseModel, message: type[Message], nest: tuple[str, type[BaseModel]] | None = None):
    """The schema's fields into the message of the same field names. `nest=(field, Base)`: a detail shape
    (Base's fields plus more) carries Base's fields in a sub-message `field`, as proto3 has no inheritance."""
    data = _jsonable(model.model_dump())
    if nest is not None:
        name, base = nest
        data = {name: {k: data.pop(k) for k in base.model_fields}, **data}
    return json_format.ParseDict(data, message())


def from_message(message: Message, schema: type[BaseModel]):
    """The request validated by the HTTP route's schema: the same limits, the same 400 → INVALID_ARGUMENT."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_validation_message(exc), code="invalid_input") from None


def row_id(value: int, what: str) -> int:
    """An id as HTTP's path accepts it (gateway.resources.shared.RowId): 0 or less is a 400, not a 404."""
    try:
        return TypeAdapter(RowId).validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {exc.errors()[0]['msg']}", code="invalid_input") from None


def optional(message: Message, field: str):
    return getattr(message, field) if message.HasField(field) else None


def _uploads(items, kind: str) -> list[Upload]:
    return [Upload(i.filename or f"{kind}-{n}", i.image) for n, i in enumerate(items)]


class ClinicEdge:
    """What every clinical RPC does first: a database session, the caller admitted by the operation's
    Access, and the registry's defaults re-read when stale (as the HTTP edge's ClinicDep)."""

    def __init__(self, clinic: Clinic, session_factory: Callable[[], AbstractContextManager]):
        self.clinic = clinic
        self.session_factory = session_factory

    @contextmanager
    def call(self, context: grpc.ServicerContext, access: Access) -> Iterator[tuple[object, Principal]]:
        with self.session_factory() as session:
            if not access.scopes:
                raise Forbidden(f"API keys cannot call this; it needs {access.describe()}")
            key = authorize(session, dict(context.invocation_metadata()).get("authorization"), access.scopes)
            self.clinic.directory.refresh(session)
            yield session, Principal(api_key=key)

    def admit(self, context: grpc.ServicerContext, access: Access) -> Principal:
        """The caller, admitted as by `call`, for RPCs that need no session afterwards."""
        with self.call(context, access) as (_, who):
            return who


class Models(pb_grpc.ModelsServicer):
    def __init__(self, edge: ClinicEdge):
        self.edge, self.clinic = edge, edge.clinic

    def ListVersions(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.list"]) as (session, _):
            return to_message(ops.list_versions(self.clinic, session, request.organ), pb.ModelVersions)

    def RecordVersion(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.record"]) as (session, who):
            body = from_message(request.new_version, ModelVersionCreate)
            out = ops.record_version(self.clinic, session, who, request.organ, body)
            return to_message(out, pb.ModelVersion)

    def GetVersion(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.show"]) as (session, _):
            detail = ops.show_version(self.clinic, session, request.organ, request.version)
            return to_message(detail, pb.ModelVersionDetail, nest=("version", ModelVersionPublic))

    def Promote(self, request, context):
        with self.edge.call(context, ACCESS["models.promote"]) as (session, who):
            body = from_message(request, PromoteRequest)
            out = ops.promote(self.clinic, session, who, request.organ, request.version, body)
            return to_message(out, pb.Promotion)

    def Rollback(self, request, context):
        with self.edge.call(context, ACCESS["models.rollback"]) as (session, who):
            reason = from_message(request, RollbackRequest).reason
            out = ops.rollback(self.clinic, session, who, request.organ, reason)
            return to_message(out, pb.ModelVersion)

    def SetReferenceSet(self, request, context):
        with self.edge.call(context, ACCESS["models.reference_set.set"]) as (session, who):
            dataset_id = from_message(request, ReferenceSetRequest).dataset_id
            out = ops.set_reference_set(self.clinic, session, who, request.organ, dataset_id)
            return to_message(out, pb.ReferenceSet)

    def GetReferenceSet(self, request, context):
        with self.edge.call(context, ACCESS["models.reference_set.show"]) as (session, _):
            return to_message(ops.show_reference_set(self.clinic, session, request.organ), pb.ReferenceSet)

    def GetSuggestedThreshold(self, request, context):
        with self.edge.call(context, ACCESS["models.suggested_threshold"]) as (session, _):
            out = ops.suggested_threshold(self.clinic, session, request.organ, optional(request, "version"))
            return to_message(out, pb.SuggestedThreshold)


class Evaluations(pb_grpc.EvaluationsServicer):
    def __init__(self, edge: ClinicEdge):
        self.edge, self.clinic = edge, edge.clinic

    def RunEvaluation(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.run"]) as (session, who):
            detail = ops.run_evaluation(
                self.clinic,
                session,
                who,
                request.organ,
                optional(request, "version"),
                optional(request, "dataset_id"),
                _uploads(request.images, "image"),
                _uploads(request.labels, "label"),
            )
            return to_message(detail, pb.EvaluationDetail, nest=("evaluation", EvaluationSummary))

    def ListEvaluations(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.list"]) as (session, _):
            out = ops.list_evaluations(
                session, optional(request, "organ"), optional(request, "version"), optional(request, "limit")
            )
            return to_message(out, pb.EvaluationList)

    def GetEvaluation(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.show"]) as (session, _):
            detail = ops.show_evaluation(session, request.id)
            return to_message(detail, pb.EvaluationDetail, nest=("evaluation", EvaluationSummary))

    def CompareEvaluations(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.compare"]) as (session, _):
            return to_message(ops.compare(session, request.a, request.b), pb.Comparison)

    def GetOverlay(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.overlay"]) as (session, _):
            return pb.Png(
                png=ops.overlay(
                    self.clinic, session, request.evaluation_id, row_id(request.case_id, "case_id")
                )
            )


class Feedback(pb_grpc.FeedbackServicer):
    def __init__(self, edge: ClinicEdge):
        self.edge = edge

    def CreateFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.create"]) as (session, who):
            body = from_message(request, FeedbackCreate)
            out = ops.create_feedback(session, who, request.organ, request.version, body)
            return to_message(out, pb.FeedbackThread)

    def ListFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.list"]) as (session, _):
            out = ops.list_feedback(
                session, optional(request, "organ"), optional(request, "version"), optional(request, "status")
            )
            return to_message(out, pb.FeedbackList)

    def GetFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.show"]) as (session, _):
            return to_message(ops.show_feedback(session, row_id(request.id, "id")), pb.FeedbackThread)

    def Reply(self, request, context):
        with self.edge.call(context, ACCESS["feedback.reply"]) as (session, who):
            body = from_message(request, ReplyCreate).body
            return to_message(
                ops.reply(session, who, row_id(request.feedback_id, "feedback_id"), body), pb.FeedbackThread
            )

    def UpdateFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.update"]) as (session, who):
            body = from_message(request, FeedbackUpdate)
            return to_message(
                ops.update_feedback(session, who, row_id(request.id, "id"), body), pb.FeedbackThread
            )


class History(pb_grpc.HistoryServicer):
    def __init__(self, edge: ClinicEdge):
        self.edge, self.clinic = edge, edge.clinic

    def ListSegmentations(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.list"]) as (session, who):
            out = ops.list_segmentations(
                self.clinic,
                session,
                who,
                optional(request, "patient_id"),
                optional(request, "organ"),
                optional(request, "limit"),
            )
            return to_message(out, pb.SegmentationHistory)

    def ChooseThreshold(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.choose_threshold"]) as (session, who):
            choice = from_message(request, ChoiceRequest)
            out = ops.choose_threshold(
                self.clinic, session, who, request.segmentation_id, choice.threshold, choice.note
            )
            return to_message(out, pb.HistoryItem)

    def GetThumbnail(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.thumbnail"]) as (session, who):
            return pb.Png(png=ops.thumbnail(self.clinic, session, who, request.segmentation_id))

    def GetMask(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.mask"]) as (session, who):
            threshold = optional(request, "threshold")
            used, png = ops.mask(self.clinic, session, who, request.segmentation_id, threshold)
            return pb.MaskPng(png=png, threshold=used)

    def GetPatientTrend(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.trend"]) as (session, who):
            out = ops.trend(self.clinic, session, who, request.patient_id, optional(request, "organ"))
            return to_message(out, pb.PatientTrend)


class Training(pb_grpc.TrainingServicer):
    def __init__(self, edge: ClinicEdge):
        self.edge, self.clinic = edge, edge.clinic

    def ListJobs(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.list"]) as (session, _):
            return to_message(ops.list_jobs(self.clinic, session), pb.TrainingJobList)

    def StartJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.start"]) as (session, who):
            body = from_message(request, TrainingJobCreate)
            return to_message(ops.start_job(self.clinic, session, who, body), pb.TrainingJob)

    def GetJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.show"]) as (session, _):
            job_id = ops.parse_uuid(request.id, "the job id")
            return to_message(ops.show_job(self.clinic, session, job_id), pb.TrainingJob)

    def CancelJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.cancel"]) as (session, who):
            job_id = ops.parse_uuid(request.id, "the job id")
            return to_message(ops.cancel_job(self.clinic, session, who, job_id), pb.TrainingJob)


def add_clinic_servicers(server: grpc.Server, edge: ClinicEdge) -> None:
    pb_grpc.add_ModelsServicer_to_server(Models(edge), server)
    pb_grpc.add_EvaluationsServicer_to_server(Evaluations(edge), server)
    pb_grpc.add_FeedbackServicer_to_server(Feedback(edge), server)
    pb_grpc.add_HistoryServicer_to_server(History(edge), server)
    pb_grpc.add_TrainingServicer_to_server(Training(edge), server)
