"""Model versions over gRPC: the medseg.v1.Models service."""

from __future__ import annotations

from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc

from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, from_message, optional, to_message
from gateway.resources.models import service
from gateway.resources.models.schemas import (
    ModelVersionCreate,
    ModelVersionPublic,
    PromoteRequest,
    ReferenceSetRequest,
    RollbackRequest,
)


class Models(Servicer, pb_grpc.ModelsServicer):
    """medseg.v1.Models: model versions, as /api/v1/models."""

    def ListVersions(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.list"]) as (session, _):
            return to_message(service.list_versions(self.clinic, session, request.organ), pb.ModelVersions)

    def RecordVersion(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.record"]) as (session, who):
            body = from_message(request.new_version, ModelVersionCreate)
            out = service.record_version(self.clinic, session, who, request.organ, body)
            return to_message(out, pb.ModelVersion)

    def GetVersion(self, request, context):
        with self.edge.call(context, ACCESS["models.versions.show"]) as (session, _):
            detail = service.show_version(self.clinic, session, request.organ, request.version)
            return to_message(detail, pb.ModelVersionDetail, nest=("version", ModelVersionPublic))

    def Promote(self, request, context):
        with self.edge.call(context, ACCESS["models.promote"]) as (session, who):
            body = from_message(request, PromoteRequest)
            out = service.promote(self.clinic, session, who, request.organ, request.version, body)
            return to_message(out, pb.Promotion)

    def Rollback(self, request, context):
        with self.edge.call(context, ACCESS["models.rollback"]) as (session, who):
            reason = from_message(request, RollbackRequest).reason
            out = service.rollback(self.clinic, session, who, request.organ, reason)
            return to_message(out, pb.ModelVersion)

    def SetReferenceSet(self, request, context):
        with self.edge.call(context, ACCESS["models.reference_set.set"]) as (session, who):
            dataset_id = from_message(request, ReferenceSetRequest).dataset_id
            out = service.set_reference_set(self.clinic, session, who, request.organ, dataset_id)
            return to_message(out, pb.ReferenceSet)

    def GetReferenceSet(self, request, context):
        with self.edge.call(context, ACCESS["models.reference_set.show"]) as (session, _):
            return to_message(
                service.show_reference_set(self.clinic, session, request.organ), pb.ReferenceSet
            )

    def GetSuggestedThreshold(self, request, context):
        with self.edge.call(context, ACCESS["models.suggested_threshold"]) as (session, _):
            out = service.suggested_threshold(
                self.clinic, session, request.organ, optional(request, "version")
            )
            return to_message(out, pb.SuggestedThreshold)
