from fastapi import APIRouter

from gateway.api.deps import DataPlaneDep, OrgansApiKey
from gateway.schemas import OrganPublic, OrgansPublic

router = APIRouter(prefix="/organs", tags=["organs"])


@router.get("", response_model=OrgansPublic)
def list_organs(dataplane: DataPlaneDep, _key: OrgansApiKey) -> OrgansPublic:
    """Organs with their current model version and readiness."""
    return OrgansPublic(organs=[OrganPublic.of(s) for s in dataplane.list_organs()])
