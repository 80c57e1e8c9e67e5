"""Dependencies of the clinical loop's routes: the Clinic services (who may call what: gateway/access.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.deps import SessionDep
from gateway.service.clinic import Clinic


def get_clinic(request: Request) -> Clinic:
    return request.app.state.clinic


def fresh_clinic(request: Request, session: SessionDep) -> Clinic:
    """The Clinic, with the model registry's defaults re-read when stale (what segment/evaluate serve)."""
    clinic = get_clinic(request)
    clinic.directory.refresh(session)
    return clinic


ClinicDep = Annotated[Clinic, Depends(fresh_clinic)]
