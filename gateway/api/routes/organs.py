from fastapi import APIRouter

from gateway.api.clinic_deps import ClinicDep, ModelReader
from gateway.api.deps import DataPlaneDep
from gateway.schemas import OrganPublic, OrgansPublic

router = APIRouter(prefix="/organs", tags=["organs"])


@router.get("", response_model=OrgansPublic)
def list_organs(dataplane: DataPlaneDep, _clinic: ClinicDep, _who: ModelReader) -> OrgansPublic:
    """Organs with their current model version and readiness."""
    return OrgansPublic(organs=[OrganPublic.of(s) for s in dataplane.list_organs()])
