"""Feedback over gRPC: the medseg.v1.Feedback service."""

from __future__ import annotations

from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc

from gateway.access import ACCESS
from gateway.resources.feedback import service
from gateway.resources.feedback.schemas import FeedbackCreate, FeedbackUpdate, ReplyCreate
from gateway.resources.grpc_edge import Servicer, from_message, optional, row_id, to_message


class Feedback(Servicer, pb_grpc.FeedbackServicer):
    """medseg.v1.Feedback: feedback threads, as /api/v1/feedback."""

    def CreateFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.create"]) as (session, who):
            body = from_message(request, FeedbackCreate)
            out = service.create_feedback(session, who, request.organ, request.version, body)
            return to_message(out, pb.FeedbackThread)

    def ListFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.list"]) as (session, who):
            out = service.list_feedback(
                session,
                who,
                optional(request, "organ"),
                optional(request, "version"),
                optional(request, "status"),
            )
            return to_message(out, pb.FeedbackList)

    def GetFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.show"]) as (session, who):
            thread = service.show_feedback(session, who, row_id(request.id, "id"))
            return to_message(thread, pb.FeedbackThread)

    def Reply(self, request, context):
        with self.edge.call(context, ACCESS["feedback.reply"]) as (session, who):
            body = from_message(request, ReplyCreate).body
            return to_message(
                service.reply(session, who, row_id(request.feedback_id, "feedback_id"), body),
                pb.FeedbackThread,
            )

    def UpdateFeedback(self, request, context):
        with self.edge.call(context, ACCESS["feedback.update"]) as (session, who):
            body = from_message(request, FeedbackUpdate)
            return to_message(
                service.update_feedback(session, who, row_id(request.id, "id"), body), pb.FeedbackThread
            )
