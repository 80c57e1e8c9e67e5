from fastapi import APIRouter

from gateway.api.deps import AnyApiKey, DataPlaneDep
from gateway.schemas import OrganPublic, OrgansPublic

router = APIRouter(prefix="/organs", tags=["organs"])


@router.get("", response_model=OrgansPublic)
def list_organs(dataplane: DataPlaneDep, _key: AnyApiKey) -> OrgansPublic:
    """Organs with their current model version and readiness."""
    return OrgansPublic(organs=[OrganPublic.of(s) for s in dataplane.list_organs()])
