"""The studies pages: /studies (upload a DICOM series or a NIfTI volume, the person's recent studies) and
/studies/{id} (the job's progress, then the volume viewer). Like every page they only read; the page scripts
call the studies API (/api/v1/studies) with the session's CSRF token."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from gateway.api.deps import SessionDep
from gateway.web.pages import DoctorSide, organ_context, render

router = APIRouter(include_in_schema=False)

# The organs a study can be segmented for: those whose scans are volumes (the API refuses the others' series
# by their modality). Microscopy organs segment 2-D images only.
VOLUME_MODALITIES = {"CT", "MR", "MRI"}


def volume_organs(request: Request) -> set[str]:
    registry = request.app.state.dataplane.registry
    return {o.name for o in registry.all() if o.spec.modality.upper() in VOLUME_MODALITIES}


def organ_imaging(request: Request) -> dict[str, dict]:
    """Per organ, what the viewer needs to show its scans: the modality (CT: Hounsfield presets) and the
    spec's window (the one the network sees)."""
    return {
        o.name: {"modality": o.spec.modality.upper(), "window": o.spec.window}
        for o in request.app.state.dataplane.registry.all()
    }


@router.get("/studies")
def studies_page(request: Request, viewer: DoctorSide, session: SessionDep):
    context = organ_context(request, viewer, session)
    volume = volume_organs(request)
    organs = [(name, display) for name, display in context["organs"] if name in volume]
    default = (
        context["default_organ"] if context["default_organ"] in volume else next((n for n, _ in organs), None)
    )
    return render(
        request,
        viewer,
        "studies.html",
        organs=organs,
        default_organ=default,
        study_max_bytes=request.app.state.web_settings.study_max_bytes,
    )


@router.get("/studies/{study_id}")
def study_page(request: Request, viewer: DoctorSide, study_id: uuid.UUID):
    """The study's page; the script asks the API for the study (a study the person may not see is a 404
    there, worded on the page)."""
    return render(request, viewer, "study.html", study_id=str(study_id), imaging=organ_imaging(request))
