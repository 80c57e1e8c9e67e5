"""The probes: /healthz (the process runs) and /readyz (every dependency answers); outside /api/v1."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.deps import DataPlaneDep
from gateway.api.disk import disk_state
from gateway.resources.health.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The gateway process runs."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "names what is down"}})
def readyz(dataplane: DataPlaneDep, request: Request):
    """Every organ server and the object store answer, and the disk has room (`disk`: "ok" or why not)."""
    readiness = dataplane.readiness()
    readiness.components["disk"] = disk_state(request.app.state.settings)  # what the upload guard checks
    if readiness.ready:
        return Health(status="ready", components=readiness.components)
    down = ", ".join(f"{name} ({readiness.components[name]})" for name in readiness.down)
    return JSONResponse(
        status_code=503,
        content={
            "error": {"code": "not_ready", "message": f"not ready; down: {down}"},
            "components": readiness.components,
        },
    )
