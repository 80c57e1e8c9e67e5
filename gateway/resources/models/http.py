"""Model versions over HTTP (/api/v1/models): record, promote, roll back, the reference set and the
suggested threshold."""

from fastapi import APIRouter, Path, status

from gateway.api.deps import ClinicDep, SessionDep, caller
from gateway.resources.models import service
from gateway.resources.models.schemas import (
    ModelVersionCreate,
    ModelVersionDetail,
    ModelVersionPublic,
    ModelVersionsPublic,
    PromoteRequest,
    PromotionPublic,
    ReferenceSetPublic,
    ReferenceSetRequest,
    RollbackRequest,
    SuggestedThresholdPublic,
)

router = APIRouter(prefix="/models", tags=["models"])

ListVersionsCaller = caller("models.versions.list")
RecordVersionCaller = caller("models.versions.record")
ShowVersionCaller = caller("models.versions.show")
PromoteCaller = caller("models.promote")
RollbackCaller = caller("models.rollback")
SetReferenceSetCaller = caller("models.reference_set.set")
ShowReferenceSetCaller = caller("models.reference_set.show")
SuggestedThresholdCaller = caller("models.suggested_threshold")

Version = Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@router.get("/{organ}/versions", response_model=ModelVersionsPublic)
def list_versions(
    organ: str, clinic: ClinicDep, _who: ListVersionsCaller, session: SessionDep
) -> ModelVersionsPublic:
    """Every recorded version of the organ's model, newest first, with its state and lineage."""
    return service.list_versions(clinic, session, organ)


@router.post("/{organ}/versions", response_model=ModelVersionPublic, status_code=status.HTTP_201_CREATED)
def record_version(
    organ: str, body: ModelVersionCreate, clinic: ClinicDep, who: RecordVersionCaller, session: SessionDep
) -> ModelVersionPublic:
    """Record a trained version (its .mar already in the models bucket) as a candidate."""
    return service.record_version(clinic, session, who, organ, body)


@router.get("/{organ}/versions/{version}", response_model=ModelVersionDetail)
def show_version(
    organ: str, version: str, clinic: ClinicDep, _who: ShowVersionCaller, session: SessionDep
) -> ModelVersionDetail:
    """One version with its events (recorded, promoted, refused, rolled back) and lineage."""
    return service.show_version(clinic, session, organ, version)


@router.post("/{organ}/versions/{version}/promote", response_model=PromotionPublic)
def promote(
    organ: str, version: str, body: PromoteRequest, clinic: ClinicDep, who: PromoteCaller, session: SessionDep
) -> PromotionPublic:
    """Make a candidate the default unless worse on the reference set (an admin may force, with a reason)."""
    return service.promote(clinic, session, who, organ, version, body)


@router.post("/{organ}/rollback", response_model=ModelVersionPublic)
def rollback(
    organ: str, body: RollbackRequest, clinic: ClinicDep, who: RollbackCaller, session: SessionDep
) -> ModelVersionPublic:
    """Restore the default the current one replaced (the current one is retired)."""
    return service.rollback(clinic, session, who, organ, body.reason)


@router.put("/{organ}/reference-set", response_model=ReferenceSetPublic)
def set_reference_set(
    organ: str, body: ReferenceSetRequest, clinic: ClinicDep, who: SetReferenceSetCaller, session: SessionDep
) -> ReferenceSetPublic:
    """Freeze a dataset (and its hash) as the organ's reference set for promotions."""
    return service.set_reference_set(clinic, session, who, organ, body.dataset_id)


@router.get("/{organ}/reference-set", response_model=ReferenceSetPublic)
def show_reference_set(
    organ: str, clinic: ClinicDep, _who: ShowReferenceSetCaller, session: SessionDep
) -> ReferenceSetPublic:
    """The organ's reference set (404 when none is set)."""
    return service.show_reference_set(clinic, session, organ)


@router.get("/{organ}/suggested-threshold", response_model=SuggestedThresholdPublic)
def suggested_threshold(
    organ: str,
    clinic: ClinicDep,
    _who: SuggestedThresholdCaller,
    session: SessionDep,
    version: str | None = None,
) -> SuggestedThresholdPublic:
    """The threshold learned from the version's evaluations and doctors' saved choices."""
    return service.suggested_threshold(clinic, session, organ, version)
