"""Segmentations over gRPC: medseg.v1.Segmentation/Segment and the medseg.v1.History service."""

from __future__ import annotations

from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc
from medseg.v1 import segmentation_pb2 as seg_pb

from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, from_message, model_ref, optional, to_message
from gateway.resources.segmentations import service
from gateway.resources.segmentations.schemas import ChoiceRequest
from gateway.service import history


class SegmentRpc(Servicer):
    """medseg.v1.Segmentation's Segment (the service is assembled in gateway/grpc_server.py)."""

    def Segment(self, request, context):
        with self.edge.call(context, ACCESS["segment"]) as (session, who):
            patient_id = request.patient_id if request.HasField("patient_id") and request.patient_id else None
            record = history.segment(  # recorded like HTTP's: who, areas, stability
                session,
                self.dataplane,
                who,
                request.organ,
                request.image,
                request.filename or "upload",
                patient_id,
                doubtful_below=self.clinic.settings.stability_doubtful_below,
                wanted_masks=optional(request, "masks"),
            )
        r = record.result
        return seg_pb.SegmentResponse(
            id=r.id,
            organ=r.organ,
            model=model_ref(r.model),
            width=r.width,
            height=r.height,
            default_threshold=r.default_threshold,
            probability_png=r.probability_png,
            masks=[
                seg_pb.Mask(threshold=m.threshold, area_px=m.area_px, mask_png=m.mask_png) for m in r.masks
            ],
            stability=record.stability,
            doubtful=record.doubtful,
            suggested_threshold=record.suggested_threshold,
        )


class History(Servicer, pb_grpc.HistoryServicer):
    """medseg.v1.History: the segmentation history, as /api/v1/segmentations and /api/v1/patients."""

    def ListSegmentations(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.list"]) as (session, who):
            out = service.list_segmentations(
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
            out = service.choose_threshold(
                self.clinic, session, who, request.segmentation_id, choice.threshold, choice.note
            )
            return to_message(out, pb.HistoryItem)

    def GetThumbnail(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.thumbnail"]) as (session, who):
            return pb.Png(png=service.thumbnail(self.clinic, session, who, request.segmentation_id))

    def GetMask(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.mask"]) as (session, who):
            threshold = optional(request, "threshold")
            used, png = service.mask(self.clinic, session, who, request.segmentation_id, threshold)
            return pb.MaskPng(png=png, threshold=used)

    def GetPatientTrend(self, request, context):
        with self.edge.call(context, ACCESS["segmentations.trend"]) as (session, who):
            out = service.trend(self.clinic, session, who, request.patient_id, optional(request, "organ"))
            return to_message(out, pb.PatientTrend)
