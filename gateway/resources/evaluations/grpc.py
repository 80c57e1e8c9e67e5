"""Evaluations over gRPC: medseg.v1.Segmentation/Evaluate and the medseg.v1.Evaluations service."""

from __future__ import annotations

from medseg.v1 import clinic_pb2 as pb
from medseg.v1 import clinic_pb2_grpc as pb_grpc
from medseg.v1 import segmentation_pb2 as seg_pb

from gateway.access import ACCESS
from gateway.resources.evaluations import service
from gateway.resources.evaluations.schemas import EvaluationSummary
from gateway.resources.grpc_edge import Servicer, model_ref, optional, row_id, to_message, uploads


class EvaluateRpc(Servicer):
    """medseg.v1.Segmentation's Evaluate (the service is assembled in gateway/grpc_server.py)."""

    def Evaluate(self, request, context):
        self.edge.admit(context, ACCESS["evaluate"])
        r = self.dataplane.evaluate(
            request.organ,
            uploads(request.images, "image"),
            uploads(request.labels, "label"),
        )
        return seg_pb.EvaluateResponse(
            organ=r.organ,
            model=model_ref(r.model),
            threshold=r.threshold,
            images=[
                seg_pb.ImageScore(
                    **{k: v for k, v in vars(s).items() if k != "per_label"},
                    per_label=_label_scores(s.per_label, "dice", "iou", "hd95_mm"),
                )
                for s in r.images
            ],
            mean_dice=r.mean_dice,
            mean_iou=r.mean_iou,
            per_threshold=[seg_pb.ThresholdScore(**vars(t)) for t in r.per_threshold],
            per_label=_label_scores(r.per_label, "mean_dice", "mean_iou", "mean_hd95_mm"),
        )


def _label_scores(scores: dict | None, dice: str, iou: str, hd95: str) -> list:
    """An organ of several labels' scores ({label: {dice, iou, hd95}} by the given keys) as LabelScores (none
    for a one-label organ); an unknown HD95 is left unset."""
    return [
        seg_pb.LabelScore(label=label, dice=s[dice], iou=s[iou], hd95_mm=s[hd95])
        if s[hd95] is not None
        else seg_pb.LabelScore(label=label, dice=s[dice], iou=s[iou])
        for label, s in (scores or {}).items()
    ]


class Evaluations(Servicer, pb_grpc.EvaluationsServicer):
    """medseg.v1.Evaluations: kept evaluations, as /api/v1/evaluations."""

    def RunEvaluation(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.run"]) as (session, who):
            detail = service.run_evaluation(
                self.clinic,
                session,
                who,
                request.organ,
                optional(request, "version"),
                optional(request, "dataset_id"),
                uploads(request.images, "image"),
                uploads(request.labels, "label"),
            )
            return to_message(detail, pb.EvaluationDetail, nest=("evaluation", EvaluationSummary))

    def ListEvaluations(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.list"]) as (session, who):
            out = service.list_evaluations(
                session,
                who,
                optional(request, "organ"),
                optional(request, "version"),
                optional(request, "limit"),
            )
            return to_message(out, pb.EvaluationList)

    def GetEvaluation(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.show"]) as (session, who):
            detail = service.show_evaluation(session, who, request.id)
            return to_message(detail, pb.EvaluationDetail, nest=("evaluation", EvaluationSummary))

    def CompareEvaluations(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.compare"]) as (session, who):
            return to_message(service.compare(session, who, request.a, request.b), pb.Comparison)

    def GetOverlay(self, request, context):
        with self.edge.call(context, ACCESS["evaluations.overlay"]) as (session, who):
            return pb.Png(
                png=service.overlay(
                    self.clinic, session, who, request.evaluation_id, row_id(request.case_id, "case_id")
                )
            )
