"""Dependencies of the clinical loop's routes: the Clinic services and who may call what (the `Access`
declarations in gateway/service/clinic_ops.py, shared with the gRPC edge)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.auth import require
from gateway.api.deps import SessionDep
from gateway.principal import Access, Principal
from gateway.service import clinic_ops as ops
from gateway.service.clinic import Clinic


def get_clinic(request: Request) -> Clinic:
    return request.app.state.clinic


def fresh_clinic(request: Request, session: SessionDep) -> Clinic:
    """The Clinic, with the model registry's defaults re-read when stale (what segment/evaluate serve)."""
    clinic = get_clinic(request)
    clinic.directory.refresh(session)
    return clinic


ClinicDep = Annotated[Clinic, Depends(fresh_clinic)]


def _who(access: Access):
    return Annotated[Principal, Depends(require(access))]


ModelReader = _who(ops.MODEL_READER)
ModelRecorder = _who(ops.MODEL_WRITER)
ModelPromoter = _who(ops.MODEL_WRITER)
Segmenter = _who(ops.SEGMENTER)
EvaluationRunner = _who(ops.EVALUATOR)
EvaluationReader = _who(ops.EVALUATOR)
HistoryReader = _who(ops.HISTORY_READER)
ThresholdChooser = _who(ops.THRESHOLD_CHOOSER)
FeedbackWriter = _who(ops.FEEDBACK)
FeedbackReader = _who(ops.FEEDBACK)
TrainingRunner = _who(ops.TRAINING)
