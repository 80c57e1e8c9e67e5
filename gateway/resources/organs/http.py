"""The organs over HTTP: GET /api/v1/organs."""

from fastapi import APIRouter

from gateway.api.deps import ClinicDep, DataPlaneDep, caller
from gateway.resources.organs.schemas import OrganPublic, OrgansPublic

router = APIRouter(prefix="/organs", tags=["organs"])

ListOrgansCaller = caller("organs.list")


@router.get("", response_model=OrgansPublic)
def list_organs(dataplane: DataPlaneDep, _clinic: ClinicDep, _who: ListOrgansCaller) -> OrgansPublic:
    """Organs with their current model version and readiness."""
    return OrgansPublic(organs=[OrganPublic.of(s) for s in dataplane.list_organs()])
