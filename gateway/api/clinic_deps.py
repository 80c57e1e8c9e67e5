"""Dependencies of the clinical loop's routes: the Clinic services and who may call what."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.auth import PEOPLE, require
from gateway.api.deps import SessionDep
from gateway.principal import Access, Principal
from gateway.service.clinic import Clinic


def get_clinic(request: Request) -> Clinic:
    return request.app.state.clinic


def fresh_clinic(request: Request, session: SessionDep) -> Clinic:
    """The Clinic, with the model registry's defaults re-read when stale (what segment/evaluate serve)."""
    clinic = get_clinic(request)
    clinic.directory.refresh(session)
    return clinic


ClinicDep = Annotated[Clinic, Depends(fresh_clinic)]

RESEARCH = ("researcher", "admin")


def _who(roles: tuple[str, ...], scopes: tuple[str, ...] = ()):
    return Annotated[Principal, Depends(require(Access(roles=roles, scopes=scopes)))]


ModelReader = _who(PEOPLE, ("models", "segment", "evaluate"))
ModelRecorder = _who(RESEARCH, ("models",))
ModelPromoter = _who(RESEARCH, ("models",))
Segmenter = _who(PEOPLE, ("segment",))
EvaluationRunner = _who(PEOPLE, ("evaluate",))
EvaluationReader = _who(PEOPLE, ("evaluate",))
HistoryReader = _who(PEOPLE, ("segment",))
ThresholdChooser = _who(("doctor",))
FeedbackWriter = _who(PEOPLE)
FeedbackReader = _who(PEOPLE)
TrainingRunner = _who(RESEARCH, ("train",))
