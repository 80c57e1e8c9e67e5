"""The hospital's PACS over gRPC: medseg.v1.Pacs, as /api/v1/pacs (pickers)."""

from __future__ import annotations

from datetime import date

from medseg.v1 import pacs_pb2 as pb
from medseg.v1 import pacs_pb2_grpc as pb_grpc

from common.errors import InvalidInput
from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, optional, to_message
from gateway.resources.pacs import service


class Pacs(Servicer, pb_grpc.PacsServicer):
    """medseg.v1.Pacs."""

    def SearchStudies(self, request, context):
        with self.edge.call(context, ACCESS["pacs.studies"]) as (_, who):
            out = service.search(
                self.clinic,
                who,
                optional(request, "patient_id") or None,
                optional(request, "modality") or None,
                _date(request, "date_from"),
                _date(request, "date_to"),
                optional(request, "limit"),
            )
            return to_message(out, pb.PacsStudyList)

    def ListSeries(self, request, context):
        with self.edge.call(context, ACCESS["pacs.series"]) as (_, who):
            return to_message(service.series(self.clinic, who, request.study_uid), pb.PacsSeriesList)


def _date(request, field: str) -> date | None:
    """A YYYY-MM-DD field as HTTP's query parses it (a bad one: the same 400 → INVALID_ARGUMENT)."""
    value = optional(request, field)
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{field}: {value[:40]!r} is not a date (YYYY-MM-DD)", code="invalid_input"
        ) from None
