"""Model versions, for both edges: each edge parses its transport's input and calls these, which call the
service layer (gateway/service/model_registry.py, the Clinic's promotions) and answer the public shapes of
schemas.py (the gRPC messages carry the same fields).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import ModelVersion
from gateway.principal import Principal
from gateway.resources.evaluations.schemas import EvaluationSummary
from gateway.resources.models.schemas import (
    ModelEventPublic,
    ModelVersionCreate,
    ModelVersionDetail,
    ModelVersionPublic,
    ModelVersionsPublic,
    PromoteRequest,
    PromotionPublic,
    ReferenceSetPublic,
    SuggestedThresholdPublic,
)
from gateway.service import history, model_registry
from gateway.service.clinic import Clinic


def _names(session: Session, organ: str) -> dict[int, str]:
    return dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.version).where(ModelVersion.organ == organ)
        ).all()
    )


def _version_public(session: Session, row: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic.of(row, _names(session, row.organ))


def _reference_public(row) -> ReferenceSetPublic:
    return ReferenceSetPublic(
        organ=row.organ,
        dataset_id=row.dataset_id,
        dataset_hash=row.dataset_hash,
        set_by=row.set_by,
        set_at=row.set_at,
    )


def list_versions(clinic: Clinic, session: Session, organ: str) -> ModelVersionsPublic:
    clinic.dataplane.registry.get(organ)
    rows = model_registry.list_versions(session, organ)
    names = _names(session, organ)
    default = next((r.version for r in rows if r.state == "default"), None)
    return ModelVersionsPublic(
        organ=organ, default_version=default, versions=[ModelVersionPublic.of(r, names) for r in rows]
    )


def record_version(
    clinic: Clinic, session: Session, who: Principal, organ: str, body: ModelVersionCreate
) -> ModelVersionPublic:
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
    clinic.promotions.serve_candidates(session, organ)
    return _version_public(session, row)


def show_version(clinic: Clinic, session: Session, organ: str, version: str) -> ModelVersionDetail:
    clinic.dataplane.registry.get(organ)
    row = model_registry.get_version(session, organ, version)
    return ModelVersionDetail(
        **_version_public(session, row).model_dump(),
        events=[
            ModelEventPublic(action=e.action, actor=e.actor, reason=e.reason, detail=e.detail, at=e.at)
            for e in model_registry.events(session, row)
        ],
        lineage=[v.version for v in model_registry.lineage(session, row)],
    )


def promote(
    clinic: Clinic, session: Session, who: Principal, organ: str, version: str, body: PromoteRequest
) -> PromotionPublic:
    clinic.dataplane.registry.get(organ)
    out = clinic.promotions.promote(session, who, organ, version, force=body.force, reason=body.reason)
    return PromotionPublic(
        version=_version_public(session, out.version),
        previous_version=out.previous.version if out.previous else None,
        forced=out.forced,
        dice_drop=out.dice_drop,
        candidate_evaluation=EvaluationSummary.of(out.candidate_evaluation)
        if out.candidate_evaluation
        else None,
        default_evaluation=EvaluationSummary.of(out.default_evaluation) if out.default_evaluation else None,
    )


def rollback(
    clinic: Clinic, session: Session, who: Principal, organ: str, reason: str | None
) -> ModelVersionPublic:
    clinic.dataplane.registry.get(organ)
    return _version_public(session, clinic.promotions.rollback(session, who, organ, reason))


def set_reference_set(
    clinic: Clinic, session: Session, who: Principal, organ: str, dataset_id: str
) -> ReferenceSetPublic:
    clinic.dataplane.registry.get(organ)
    return _reference_public(model_registry.set_reference_set(session, who, organ, dataset_id))


def show_reference_set(clinic: Clinic, session: Session, organ: str) -> ReferenceSetPublic:
    clinic.dataplane.registry.get(organ)
    return _reference_public(model_registry.get_reference_set(session, organ))


def suggested_threshold(
    clinic: Clinic, session: Session, organ: str, version: str | None
) -> SuggestedThresholdPublic:
    """For `version` (default: the organ's current one): learned from its evaluations and saved choices."""
    registry = clinic.dataplane.registry
    spec = registry.get(organ).spec
    if version:
        row = model_registry.get_version(session, organ, version)
        default = row.default_threshold or spec.default_threshold
    else:
        version, default = registry.model(organ).version, clinic.default_threshold(organ)
    return SuggestedThresholdPublic(
        organ=organ,
        version=version,
        default_threshold=default,
        suggested_threshold=history.suggested_threshold(session, organ, version, default),
    )
