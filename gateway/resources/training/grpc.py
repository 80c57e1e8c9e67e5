"""Training jobs over gRPC: the medseg.v1.Training service."""

from __future__ import annotations

from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc

from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, from_message, to_message
from gateway.resources.shared import parse_uuid
from gateway.resources.training import service
from gateway.resources.training.schemas import TrainingJobCreate


class Training(Servicer, pb_grpc.TrainingServicer):
    """medseg.v1.Training: training jobs, as /api/v1/training/jobs."""

    def ListJobs(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.list"]) as (session, _):
            return to_message(service.list_jobs(self.clinic, session), pb.TrainingJobList)

    def StartJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.start"]) as (session, who):
            body = from_message(request, TrainingJobCreate)
            return to_message(service.start_job(self.clinic, session, who, body), pb.TrainingJob)

    def GetJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.show"]) as (session, _):
            job_id = parse_uuid(request.id, "the job id")
            return to_message(service.show_job(self.clinic, session, job_id), pb.TrainingJob)

    def CancelJob(self, request, context):
        with self.edge.call(context, ACCESS["training.jobs.cancel"]) as (session, who):
            job_id = parse_uuid(request.id, "the job id")
            return to_message(service.cancel_job(self.clinic, session, who, job_id), pb.TrainingJob)
