from fastapi import APIRouter, Path, status
from sqlalchemy import select

from gateway.api.clinic_deps import ClinicDep, ModelPromoter, ModelReader, ModelRecorder
from gateway.api.deps import SessionDep
from gateway.models import ModelVersion
from gateway.schemas_clinic import (
    EvaluationSummary,
    ModelEventPublic,
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
from gateway.service import history, model_registry

router = APIRouter(prefix="/models", tags=["models"])

Version = Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _names(session, organ: str) -> dict[int, str]:
    return dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.version).where(ModelVersion.organ == organ)
        ).all()
    )


def _public(session, row: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic.of(row, _names(session, row.organ))


@router.get("/{organ}/versions", response_model=ModelVersionsPublic)
def list_versions(
    organ: str, clinic: ClinicDep, _who: ModelReader, session: SessionDep
) -> ModelVersionsPublic:
    """Every recorded version of the organ's model, newest first, with its state and lineage."""
    clinic.dataplane.registry.get(organ)
    rows = model_registry.list_versions(session, organ)
    names = _names(session, organ)
    default = next((r.version for r in rows if r.state == "default"), None)
    return ModelVersionsPublic(
        organ=organ, default_version=default, versions=[ModelVersionPublic.of(r, names) for r in rows]
    )


@router.post("/{organ}/versions", response_model=ModelVersionPublic, status_code=status.HTTP_201_CREATED)
def record_version(
    organ: str, body: ModelVersionCreate, clinic: ClinicDep, who: ModelRecorder, session: SessionDep
) -> ModelVersionPublic:
    """Record a trained version (its .mar already in the models bucket) as a candidate."""
    clinic.dataplane.registry.get(organ)
    store = clinic.dataplane.store
    row = model_registry.record_version(
        session,
        who.actor,
        organ,
        model_registry.NewVersion(**body.model_dump()),
        store=store if body.mar_key else None,
        models_bucket=store.buckets.models,
    )
    return _public(session, row)


@router.get("/{organ}/versions/{version}", response_model=ModelVersionDetail)
def show_version(
    organ: str, version: str, clinic: ClinicDep, _who: ModelReader, session: SessionDep
) -> ModelVersionDetail:
    """One version with its events (recorded, promoted, refused, rolled back) and lineage."""
    clinic.dataplane.registry.get(organ)
    row = model_registry.get_version(session, organ, version)
    return ModelVersionDetail(
        **_public(session, row).model_dump(),
        events=[
            ModelEventPublic(action=e.action, actor=e.actor, reason=e.reason, detail=e.detail, at=e.at)
            for e in model_registry.events(session, row)
        ],
        lineage=[v.version for v in model_registry.lineage(session, row)],
    )


@router.post("/{organ}/versions/{version}/promote", response_model=PromotionPublic)
def promote(
    organ: str, version: str, body: PromoteRequest, clinic: ClinicDep, who: ModelPromoter, session: SessionDep
) -> PromotionPublic:
    """Make a candidate the default unless worse on the reference set (an admin may force, with a reason)."""
    clinic.dataplane.registry.get(organ)
    out = clinic.promotions.promote(session, who, organ, version, force=body.force, reason=body.reason)
    return PromotionPublic(
        version=_public(session, out.version),
        previous_version=out.previous.version if out.previous else None,
        forced=out.forced,
        dice_drop=out.dice_drop,
        candidate_evaluation=EvaluationSummary.of(out.candidate_evaluation)
        if out.candidate_evaluation
        else None,
        default_evaluation=EvaluationSummary.of(out.default_evaluation) if out.default_evaluation else None,
    )


@router.post("/{organ}/rollback", response_model=ModelVersionPublic)
def rollback(
    organ: str, body: RollbackRequest, clinic: ClinicDep, who: ModelPromoter, session: SessionDep
) -> ModelVersionPublic:
    """Restore the default the current one replaced (the current one is retired)."""
    clinic.dataplane.registry.get(organ)
    return _public(session, clinic.promotions.rollback(session, who, organ, body.reason))


@router.put("/{organ}/reference-set", response_model=ReferenceSetPublic)
def set_reference_set(
    organ: str, body: ReferenceSetRequest, clinic: ClinicDep, who: ModelPromoter, session: SessionDep
) -> ReferenceSetPublic:
    """Freeze a dataset (and its hash) as the organ's reference set for promotions."""
    clinic.dataplane.registry.get(organ)
    row = model_registry.set_reference_set(session, who, organ, body.dataset_id)
    return ReferenceSetPublic(
        organ=row.organ,
        dataset_id=row.dataset_id,
        dataset_hash=row.dataset_hash,
        set_by=row.set_by,
        set_at=row.set_at,
    )


@router.get("/{organ}/reference-set", response_model=ReferenceSetPublic)
def show_reference_set(
    organ: str, clinic: ClinicDep, _who: ModelReader, session: SessionDep
) -> ReferenceSetPublic:
    """The organ's reference set (404 when none is set)."""
    clinic.dataplane.registry.get(organ)
    row = model_registry.get_reference_set(session, organ)
    return ReferenceSetPublic(
        organ=row.organ,
        dataset_id=row.dataset_id,
        dataset_hash=row.dataset_hash,
        set_by=row.set_by,
        set_at=row.set_at,
    )


@router.get("/{organ}/suggested-threshold", response_model=SuggestedThresholdPublic)
def suggested_threshold(
    organ: str, clinic: ClinicDep, _who: ModelReader, session: SessionDep, version: str | None = None
) -> SuggestedThresholdPublic:
    """The threshold learned from the version's evaluations and doctors' saved choices."""
    clinic.dataplane.registry.get(organ)
    if version:
        row = model_registry.get_version(session, organ, version)
        default = row.default_threshold or clinic.dataplane.registry.get(organ).spec.default_threshold
    else:
        version, default = clinic.dataplane.registry.model(organ).version, clinic.default_threshold(organ)
    return SuggestedThresholdPublic(
        organ=organ,
        version=version,
        default_threshold=default,
        suggested_threshold=history.suggested_threshold(session, organ, version, default),
    )
