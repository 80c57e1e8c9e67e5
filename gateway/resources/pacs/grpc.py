"""The hospital's PACS over gRPC: medseg.v1.Pacs, as /api/v1/pacs (pickers)."""

from __future__ import annotations

from medseg.v1 import pacs_pb2 as pb
from medseg.v1 import pacs_pb2_grpc as pb_grpc

from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, from_message, to_message
from gateway.resources.pacs import service
from gateway.resources.pacs.schemas import PacsStudySearch


class Pacs(Servicer, pb_grpc.PacsServicer):
    """medseg.v1.Pacs."""

    def SearchStudies(self, request, context):
        with self.edge.call(context, ACCESS["pacs.studies"]) as (_, who):
            out = service.search(self.clinic, who, from_message(request, PacsStudySearch))
            return to_message(out, pb.PacsStudyList)

    def ListSeries(self, request, context):
        with self.edge.call(context, ACCESS["pacs.series"]) as (_, who):
            return to_message(service.series(self.clinic, who, request.study_uid), pb.PacsSeriesList)
