"""Model versions in the database: organs → versions (candidate → default → retired), lineage, promotion.

* Seeding: at start, an organ without any version gets the shipped model (model-store/<organ>.json card,
  else the .mar manifest) as its default, so the card stays the seed and the database the truth. A card
  that changed later (a new shipped version) is recorded too, and replaces a default that was itself
  shipped (`seed_from_model_store`).
* Recording: the trainer uploads the .mar to the models bucket and registers it with the organ's TorchServe
  (common/model_store.py), then records the version with `POST /api/v1/models/{organ}/versions` (scope
  `models`), which lands in `record_version`. A training job started from the API records its candidate
  through the same function.
* Promotion is gated: candidate and current default are evaluated on the organ's reference set (a dataset
  whose hash is recorded when it is chosen and checked at every use); the candidate is refused when its
  mean Dice is lower by more than `Settings.promotion_max_dice_drop`, unless an admin forces it with a
  written reason. The organ servers' default and the database change as one unit
  (`Promotions._commit_with_rollout`): servers that cannot be changed leave everything as it was (503), and a
  database that cannot commit gets the previous default set back. What "the organ servers' default" means
  is the `ModelRollout` `Settings.model_rollout` names (gateway/service/model_rollout.py): TorchServe's
  management API locally, the organ Deployment's pinned version in Kubernetes.
* Rollback restores the default the current one replaced (`previous_default_id`), in one call.
* The gateway serves and labels the database's default: `ModelDirectory` is the in-memory view the organ
  registry consults (refreshed from the database at most every `ttl_s`, and at once after a change here).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from common.errors import Conflict, Forbidden, InvalidInput, MedSegError, NotFound, ServiceUnavailable
from gateway import tenancy
from gateway.access import DATASET_READ
from gateway.core.db import database_unavailable
from gateway.models import ModelEvent, ModelVersion, ReferenceSet, audit
from gateway.principal import Principal
from gateway.service.model_rollout import ModelRollout
from gateway.service.organs import ModelInfo, OrganRegistry, _model_from_card, _model_from_mar

logger = logging.getLogger(__name__)

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _now() -> datetime:
    return datetime.now(UTC)


# --- the gateway's view of the defaults ---------------------------------------------------------------
class ModelDirectory:
    """organ → the default version's ModelInfo, as the database says; read by OrganRegistry.model()."""

    def __init__(self, ttl_s: float = 2.0):
        self.ttl_s = ttl_s
        self._defaults: dict[str, ModelInfo] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def get(self, organ: str) -> ModelInfo | None:
        return self._defaults.get(organ)

    def refresh(self, session: Session, *, force: bool = False) -> None:
        """Re-read the defaults when older than ttl_s (or `force`)."""
        now = time.monotonic()
        if not force and self._loaded_at is not None and now - self._loaded_at < self.ttl_s:
            return
        rows = session.execute(
            select(
                ModelVersion.organ,
                ModelVersion.model_name,
                ModelVersion.version,
                ModelVersion.default_threshold,
            ).where(ModelVersion.state == "default")
        ).all()
        with self._lock:
            self._defaults = {r.organ: ModelInfo(r.model_name, r.version, r.default_threshold) for r in rows}
            self._loaded_at = now

    def invalidate(self) -> None:
        self._loaded_at = None


# --- reading ------------------------------------------------------------------------------------------
def list_versions(session: Session, organ: str) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.organ == organ).order_by(ModelVersion.id.desc())
        )
    )


def get_version(session: Session, organ: str, version: str) -> ModelVersion:
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.organ == organ, ModelVersion.version == version)
    )
    if row is None:
        known = [v.version for v in list_versions(session, organ)[:10]]
        raise NotFound(
            f"no version {version!r} of the {organ} model; recent versions: {', '.join(known) or 'none'}",
            code="unknown_version",
            params={"organ": organ, "version": version},
        )
    return row


def current_default(session: Session, organ: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.organ == organ, ModelVersion.state == "default")
    )


def events(session: Session, version: ModelVersion) -> list[ModelEvent]:
    return list(
        session.scalars(select(ModelEvent).where(ModelEvent.version_id == version.id).order_by(ModelEvent.id))
    )


def lineage(session: Session, version: ModelVersion, limit: int = 50) -> list[ModelVersion]:
    """The version, its parent, its parent's parent … (oldest last)."""
    chain, seen, row = [], set(), version
    while row is not None and row.id not in seen and len(chain) < limit:
        chain.append(row)
        seen.add(row.id)
        row = session.get(ModelVersion, row.parent_id) if row.parent_id else None
    return chain


# --- writing ------------------------------------------------------------------------------------------
def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"{what} already exists", code="version_exists") from None


SEED_ACTOR = "seed:model-store"


def seed_from_model_store(session: Session, organs: OrganRegistry) -> list[ModelVersion]:
    """Record the shipped model (model-store/<organ>.json card, else the .mar manifest) of every organ whose
    shipped version the database does not know yet.

    * An organ without any version: the shipped one becomes its default.
    * A changed card (model-store/ replaced, e.g. cells 1.0 → 1.1): the new version is recorded with the
      current default as its parent. When that default is itself a shipped seed (not a version researchers
      promoted), the new shipped version replaces it as the default, since the organ server now loads only
      the shipped archive; otherwise it stays a candidate for the usual gated promotion. Both cases leave
      a model event and an audit entry."""
    seeded = []
    for organ in organs.names():
        row = _seed_organ(session, organs, organ)
        if row is not None:
            seeded.append(row)
    session.commit()
    return seeded


def _seed_organ(session: Session, organs: OrganRegistry, organ: str) -> ModelVersion | None:
    """Record `organ`'s shipped version; None when nothing is shipped or the database knows it already."""
    card_path = organs.model_store_dir / f"{organ}.json"
    mar_path = organs.model_store_dir / f"{organ}.mar"
    info = _model_from_card(card_path, _model_from_mar(mar_path) or ModelInfo(organ, "unknown"))
    if info.version == "unknown":
        logger.info("no shipped model for organ %s in %s: nothing to seed", organ, organs.model_store_dir)
        return None
    if _version_id(session, organ, info.version) is not None:
        return None
    any_version = session.scalar(select(ModelVersion.id).where(ModelVersion.organ == organ).limit(1))
    current = current_default(session, organ) if any_version is not None else None
    # no default to keep (none yet, or none left): the organ must serve something
    replaces = current is None or current.created_by == SEED_ACTOR
    now = _now()
    row = _add_seeded_row(session, organ, info, _read_json(card_path), current, replaces, now)
    detail = {"card": str(card_path), "mar": mar_path.is_file()}
    if any_version is not None:
        detail["previous_default"] = current.version if current else None
        if replaces and current is not None:
            _retire_replaced_seed(session, current, info.version, card_path, now)
        action = "model.seed_default" if replaces else "model.seed_candidate"
        audit(session, SEED_ACTOR, action, f"model:{organ}:{info.version}", detail)
    session.add(ModelEvent(version_id=row.id, action="seeded", actor=SEED_ACTOR, detail=detail))
    _log_seeded(organ, info, current, replaces)
    return row


def _version_id(session: Session, organ: str, version: str):
    """The id of `organ`'s recorded `version`, None when it is not recorded."""
    return session.scalar(
        select(ModelVersion.id).where(ModelVersion.organ == organ, ModelVersion.version == version)
    )


def _add_seeded_row(
    session: Session,
    organ: str,
    info: ModelInfo,
    card: dict,
    current: ModelVersion | None,
    replaces: bool,
    now: datetime,
) -> ModelVersion:
    """Add (and flush, for its id) the shipped version: the default when it `replaces`, else a candidate."""
    dataset = card.get("dataset") if isinstance(card.get("dataset"), dict) else {}
    row = ModelVersion(
        organ=organ,
        model_name=info.name,
        version=info.version,
        state="default" if replaces else "candidate",
        mar_key=None,
        mar_sha256=card.get("mar_sha256"),
        card=card,
        metrics=card.get("metrics") if isinstance(card.get("metrics"), dict) else {},
        dataset_id=dataset.get("id"),
        dataset_hash=dataset.get("hash"),
        commit=card.get("commit"),
        default_threshold=info.default_threshold,
        parent_id=current.id if current else None,
        previous_default_id=current.id if current and replaces else None,
        created_by=SEED_ACTOR,
        promoted_at=now if replaces else None,
    )
    session.add(row)
    session.flush()
    return row


def _retire_replaced_seed(
    session: Session, current: ModelVersion, version: str, card_path, now: datetime
) -> None:
    """The shipped default a newer shipped `version` replaces: retired, with the event saying why."""
    current.state, current.retired_at = "retired", now
    session.add(
        ModelEvent(version_id=current.id, action="replaced_by_shipped", actor=SEED_ACTOR,
                   detail={"version": version, "card": str(card_path)})
    )  # fmt: skip


def _log_seeded(organ: str, info: ModelInfo, current: ModelVersion | None, replaces: bool) -> None:
    # a candidate is served only once promoted: until then the organ server must still have the default
    if replaces:
        logger.info("seeded %s model %s version %s as the default", organ, info.name, info.version)
    else:
        logger.warning(
            "the shipped %s model is now version %s; the default %s was promoted by people and stays the "
            "default, %s is recorded as a candidate. The organ server must still have %s registered "
            "(medseg model register) or segmentation of %s fails",
            organ, info.version, current.version, info.version, current.version, organ,
        )  # fmt: skip


def _read_json(path) -> dict:
    import json

    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class NewVersion:
    model_name: str
    version: str
    mar_key: str | None = None
    mar_sha256: str | None = None
    card: dict | None = None
    metrics: dict | None = None
    dataset_id: str | None = None
    dataset_hash: str | None = None
    commit: str | None = None
    default_threshold: float | None = None
    parent_version: str | None = None  # default: the organ's current default


def record_version(
    session: Session, actor: str, organ: str, new: NewVersion, *, store=None, models_bucket: str | None = None
) -> ModelVersion:
    """Record a trained version as a candidate. With `store`, its .mar must exist in the models bucket."""
    _check_new_version(new)
    if _version_id(session, organ, new.version):
        raise Conflict(
            f"{organ} version {new.version} is already recorded; versions are immutable",
            code="version_exists",
        )
    parent = (
        get_version(session, organ, new.parent_version)
        if new.parent_version
        else current_default(session, organ)
    )
    if store is not None and new.mar_key:
        _require_archive(store, models_bucket, new.mar_key)
    row = _add_candidate_row(session, actor, organ, new, parent)
    parent_version = parent.version if parent else None
    session.add(
        ModelEvent(version_id=row.id, action="recorded", actor=actor, detail={"parent": parent_version})
    )
    audit(session, actor, "model.record", f"model:{organ}:{new.version}", {"parent": parent_version})
    _commit(session, f"{organ} version {new.version}")
    return row


def _check_new_version(new: NewVersion) -> None:
    """Names that are safe in object keys and URLs, and a threshold a probability can cross."""
    import re

    if not re.match(VERSION_PATTERN, new.version or "") or not re.match(
        VERSION_PATTERN, new.model_name or ""
    ):
        raise InvalidInput(
            "model_name and version: letters, digits, '.', '_' or '-', at most 64 (e.g. 20250101.120000)",
            code="invalid_version_name",
        )
    if new.default_threshold is not None and not 0.0 < new.default_threshold < 1.0:
        raise InvalidInput(
            f"default_threshold must be between 0 and 1, not {new.default_threshold}",
            code="invalid_input",
            params={"field": "default_threshold", "rule": "invalid"},
        )


def _require_archive(store, models_bucket: str | None, mar_key: str) -> None:
    """A version nobody can load must not be recorded: its .mar has to be in the models bucket."""
    if not store.exists(models_bucket, mar_key):  # ServiceUnavailable when the store is down
        raise InvalidInput(
            f"no object {mar_key!r} in bucket {models_bucket}: upload the .mar first "
            "(common.model_store.register_version does)",
            code="missing_archive",
        )


def _add_candidate_row(
    session: Session, actor: str, organ: str, new: NewVersion, parent: ModelVersion | None
) -> ModelVersion:
    """Add (and flush, for its id) the candidate row of `new`, its lineage pointing at `parent`."""
    row = ModelVersion(
        organ=organ,
        model_name=new.model_name,
        version=new.version,
        state="candidate",
        mar_key=new.mar_key,
        mar_sha256=new.mar_sha256,
        card=new.card or {},
        metrics=new.metrics or {},
        dataset_id=new.dataset_id,
        dataset_hash=new.dataset_hash,
        commit=new.commit,
        default_threshold=new.default_threshold,
        parent_id=parent.id if parent else None,
        created_by=actor,
    )
    session.add(row)
    session.flush()
    return row


def set_reference_set(session: Session, principal: Principal, organ: str, dataset_id: str) -> ReferenceSet:
    """Freeze `dataset_id` (its current hash) as the organ's reference set for promotions."""
    missing = NotFound(f"no dataset {dataset_id!r}", code="unknown_dataset", params={"id": dataset_id})
    dataset = tenancy.get(session, principal, DATASET_READ, dataset_id, missing)  # one the caller sees
    if dataset.status != "ready" or dataset.deleted_at is not None:
        raise missing
    if dataset.organ != organ:
        raise InvalidInput(
            f"dataset {dataset_id} is a {dataset.organ} dataset, not {organ}",
            code="wrong_organ",
            params={"dataset_organ": dataset.organ, "organ": organ},
        )
    row = session.get(ReferenceSet, organ) or ReferenceSet(organ=organ)
    row.dataset_id, row.dataset_hash, row.set_by, row.set_at = (
        dataset.id,
        dataset.dataset_hash,
        principal.actor,
        _now(),
    )
    session.add(row)
    audit(
        session,
        principal.actor,
        "model.reference_set",
        f"organ:{organ}",
        {"dataset": dataset.id, "hash": dataset.dataset_hash},
    )
    session.commit()
    return row


def get_reference_set(session: Session, organ: str) -> ReferenceSet:
    row = session.get(ReferenceSet, organ)
    if row is None:
        raise NotFound(
            f"organ {organ} has no reference set; a researcher sets one with "
            f"PUT /api/v1/models/{organ}/reference-set",
            code="no_reference_set",
            params={"organ": organ},
        )
    return row


# --- promotion and rollback -----------------------------------------------------------------------------
MAX_SERVED_CANDIDATES = 3  # each served version is one more model (and its workers) in every organ pod


def served_beside(session: Session, organ: str, default: ModelVersion) -> list[str]:
    """The versions the organ servers load beside `default`: the one a rollback would restore (so a rollback
    is served everywhere before it happens) and the newest candidates (the promotion gate and doctors' model
    tests run them)."""
    previous = session.get(ModelVersion, default.previous_default_id) if default.previous_default_id else None
    candidates = session.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.organ == organ, ModelVersion.state == "candidate")
        .order_by(ModelVersion.id.desc())
        .limit(MAX_SERVED_CANDIDATES)
    ).all()
    versions = ([previous.version] if previous is not None else []) + list(candidates)
    return [v for v in dict.fromkeys(versions) if v != default.version]


def served_versions(session: Session, organ: str) -> list[ModelVersion]:
    """What the organ's servers serve: its default first, then the versions `served_beside` it; empty when
    the organ has no default yet. Every start of an organ server loads exactly these (docs/architecture.md,
    "What an organ server serves": tools/stack.py locally, the versions pinned in its Deployment in
    Kubernetes)."""
    default = current_default(session, organ)
    if default is None:
        return []
    beside = served_beside(session, organ, default)
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.organ == organ, ModelVersion.version.in_(beside))
    )
    by_version = {row.version: row for row in rows}
    return [default, *(by_version[v] for v in beside if v in by_version)]


@dataclass(frozen=True)
class PromotionOutcome:
    version: ModelVersion
    previous: ModelVersion | None
    forced: bool
    candidate_evaluation: object | None  # gateway.models.Evaluation
    default_evaluation: object | None
    dice_drop: float | None


@dataclass(frozen=True)
class _Gate:
    """A promotion's comparison on the reference set: both stored evaluations, the candidate's Dice loss
    against the default, and whether that loss exceeds the allowed drop."""

    candidate_evaluation: object  # gateway.models.Evaluation
    default_evaluation: object
    dice_drop: float
    failed: bool


class Promotions:
    """Gated promotion and rollback. `evaluate(session, principal, organ, version_row, dataset_id, purpose)`
    returns a stored Evaluation (gateway.service.evaluations.Evaluator.evaluate_dataset); `rollout` moves the
    organ servers' default (gateway/service/model_rollout.py)."""

    def __init__(self, evaluate, rollout: ModelRollout, directory: ModelDirectory, max_dice_drop: float):
        self.evaluate = evaluate
        self.rollout = rollout
        self.directory = directory
        self.max_dice_drop = max_dice_drop

    def promote(
        self,
        session: Session,
        principal: Principal,
        organ: str,
        version: str,
        *,
        force: bool = False,
        reason: str | None = None,
    ) -> PromotionOutcome:
        """Make `version` the organ's default: check it may be promoted, compare it with the current default
        on the reference set (refused when it loses too much Dice, unless an admin forces it), record the
        promotion, and move the organ servers' default and the database's as one unit."""
        candidate = get_version(session, organ, version)
        reason = (reason or "").strip() or None
        self._check_promotable(principal, candidate, force, reason)
        current = current_default(session, organ)
        gate = self._compare_with_default(session, principal, candidate, current, force)
        if gate is not None and gate.failed and not force:
            self._refuse(session, principal, candidate, current, gate)
        # Forced: past a failed gate, or past a default with no reference set to compare it with.
        forced = bool(force and (gate.failed if gate is not None else current is not None))
        self._record_promotion(session, principal, candidate, current, gate, forced=forced, reason=reason)
        self._roll_out(session, organ, candidate, current)
        return PromotionOutcome(
            candidate,
            current,
            forced,
            gate.candidate_evaluation if gate is not None else None,
            gate.default_evaluation if gate is not None else None,
            gate.dice_drop if gate is not None else None,
        )

    @staticmethod
    def _check_promotable(
        principal: Principal, candidate: ModelVersion, force: bool, reason: str | None
    ) -> None:
        """Refuse a version that is retired or already the default, and a forced promotion that is not an
        admin's or has no written reason."""
        organ, version = candidate.organ, candidate.version
        if candidate.state == "retired":
            raise Conflict(
                f"{organ} version {version} is retired and cannot be promoted; to restore the previous "
                f"default use POST /api/v1/models/{organ}/rollback",
                code="version_retired",
                params={"version": version},
            )
        if candidate.state == "default":
            raise Conflict(
                f"{organ} version {version} is already the default",
                code="already_default",
                params={"version": version},
            )
        if force:
            if not principal.is_admin:
                raise Forbidden(
                    "only an admin may force a promotion past the reference-set gate", code="forbidden"
                )
            if not reason or len(reason) < 10:
                raise InvalidInput(
                    "a forced promotion needs a written reason (at least 10 characters)",
                    code="reason_required",
                )

    def _compare_with_default(
        self,
        session: Session,
        principal: Principal,
        candidate: ModelVersion,
        current: ModelVersion | None,
        force: bool,
    ) -> _Gate | None:
        """Evaluate the candidate, then the current default, on the organ's reference set. None when there is
        no default to compare with, or (forced promotions only) no reference set."""
        if current is None:
            return None
        organ = candidate.organ
        reference = session.get(ReferenceSet, organ)
        if reference is None:
            if force:
                return None
            raise Conflict(
                f"organ {organ} has no reference set to compare {candidate.version} with the default "
                f"{current.version}; set one (PUT /api/v1/models/{organ}/reference-set) or have an "
                "admin force the promotion",
                code="no_reference_set",
                params={"organ": organ},
            )
        candidate_evaluation = self._evaluate_on_reference(session, principal, candidate, reference)
        default_evaluation = self._evaluate_on_reference(session, principal, current, reference)
        drop = default_evaluation.mean_dice - candidate_evaluation.mean_dice
        return _Gate(candidate_evaluation, default_evaluation, drop, failed=drop > self.max_dice_drop)

    def _evaluate_on_reference(
        self, session: Session, principal: Principal, row: ModelVersion, reference: ReferenceSet
    ):
        """A stored promotion Evaluation of `row` on the reference set (whose hash must still be the frozen
        one)."""
        return self.evaluate(
            session,
            principal,
            row.organ,
            row,
            reference.dataset_id,
            purpose="promotion",
            expected_hash=reference.dataset_hash,
        )

    def _refuse(
        self,
        session: Session,
        principal: Principal,
        candidate: ModelVersion,
        current: ModelVersion,
        gate: _Gate,
    ) -> NoReturn:
        """Record the refusal (event and audit, committed: the refusal is history too) and raise it (409)."""
        organ, version = candidate.organ, candidate.version
        detail = self._gate_detail(gate.candidate_evaluation, gate.default_evaluation, gate.dice_drop)
        session.add(
            ModelEvent(
                version_id=candidate.id,
                action="promotion_refused",
                actor=principal.actor,
                detail=detail,
            )
        )
        audit(session, principal.actor, "model.promotion_refused", f"model:{organ}:{version}", detail)
        session.commit()
        raise Conflict(
            f"promotion refused: {version} scores mean Dice {gate.candidate_evaluation.mean_dice:.4f} on the "
            f"reference set, {gate.dice_drop:.4f} below the default {current.version} "
            f"({gate.default_evaluation.mean_dice:.4f}); the allowed drop is {self.max_dice_drop:.4f}. An "
            "admin may force it with a written reason.",
            code="promotion_refused",
        )

    def _record_promotion(
        self,
        session: Session,
        principal: Principal,
        candidate: ModelVersion,
        current: ModelVersion | None,
        gate: _Gate | None,
        *,
        forced: bool,
        reason: str | None,
    ) -> None:
        """Stage the change of default in the session (states, the model event, the audit entry); `_roll_out`
        commits it together with the organ servers' change."""
        now = _now()
        if current is not None:
            current.state, current.retired_at = "retired", now
        candidate.state, candidate.promoted_at = "default", now
        candidate.previous_default_id = current.id if current else None
        detail = {
            "previous": current.version if current else None,
            "forced": forced,
            **(
                self._gate_detail(gate.candidate_evaluation, gate.default_evaluation, gate.dice_drop)
                if gate is not None
                else {}
            ),
        }
        session.add(
            ModelEvent(
                version_id=candidate.id,
                action="forced_promotion" if forced else "promoted",
                actor=principal.actor,
                reason=reason,
                detail=detail,
            )
        )
        audit(
            session,
            principal.actor,
            "model.promote",
            f"model:{candidate.organ}:{candidate.version}",
            {**detail, "reason": reason},
        )

    def _roll_out(
        self, session: Session, organ: str, new_default: ModelVersion, old_default: ModelVersion | None
    ) -> None:
        """Commit the staged change of default with the organ servers' (`_commit_with_rollout`), then refresh
        this process's directory so it serves the new default at once."""
        self._commit_with_rollout(session, organ, new_default, old_default)
        self.directory.refresh(session, force=True)

    def rollback(
        self, session: Session, principal: Principal, organ: str, reason: str | None = None
    ) -> ModelVersion:
        """Make the default the current one replaced the default again; the current one is retired."""
        current = current_default(session, organ)
        if current is None:
            raise Conflict(f"organ {organ} has no default version", code="nothing_to_roll_back")
        previous = (
            session.get(ModelVersion, current.previous_default_id) if current.previous_default_id else None
        )
        if previous is None:
            raise Conflict(
                f"{organ} version {current.version} did not replace another default; nothing to roll back to",
                code="nothing_to_roll_back",
            )
        now = _now()
        current.state, current.retired_at = "retired", now
        previous.state, previous.promoted_at, previous.retired_at = "default", now, None
        detail = {"from": current.version, "to": previous.version}
        session.add_all(  # one event on each side of the rollback
            ModelEvent(version_id=v.id, action=action, actor=principal.actor, reason=reason, detail=detail)
            for v, action in ((previous, "rolled_back_to"), (current, "rolled_back_from"))
        )
        audit(session, principal.actor, "model.rollback", f"model:{organ}", {**detail, "reason": reason})
        self._roll_out(session, organ, previous, current)
        return previous

    @staticmethod
    def _gate_detail(cand_eval, default_eval, drop) -> dict:
        return {
            "candidate_mean_dice": cand_eval.mean_dice,
            "default_mean_dice": default_eval.mean_dice,
            "dice_drop": drop,
            "candidate_evaluation": str(cand_eval.id),
            "default_evaluation": str(default_eval.id),
            "reference_dataset": cand_eval.dataset_id,
            "reference_hash": cand_eval.dataset_hash,
        }

    def serve_candidates(self, session: Session, organ: str) -> None:
        """After a candidate was recorded: have the organ servers load it beside the default (in Kubernetes a
        rollout of the Deployment; locally nothing, registration loaded it). The candidate stays recorded when
        that fails; an event on it says why and what runs the rollout again (any promotion or rollback)."""
        default = current_default(session, organ)
        newest = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.organ == organ, ModelVersion.state == "candidate")
            .order_by(ModelVersion.id.desc())
            .limit(1)
        )
        if default is None or newest is None:
            return
        try:
            self.rollout.serve(
                organ, default.model_name, default.version, served_beside(session, organ, default)
            )
        except MedSegError as exc:
            logger.warning(
                "%s: candidate %s is recorded but not served: %s", organ, newest.version, exc.message
            )
            session.add(
                ModelEvent(version_id=newest.id, action="not_served", actor="gateway", reason=exc.message)
            )
            session.commit()

    def serve_registered(self, session: Session) -> None:
        """At the gateway's start: have every organ's servers serve what the registry names
        (`served_versions`). In Kubernetes this pins the versions again in each organ Deployment, so a pin
        that failed when a candidate was recorded is made up for (an unchanged pin changes nothing, nothing
        rolls); locally it does nothing, since every organ-server start loads those versions itself
        (tools/stack.py). A failure is logged: the gateway starts regardless."""
        organs = session.scalars(select(ModelVersion.organ).where(ModelVersion.state == "default")).all()
        for organ in sorted(organs):
            default, *beside = served_versions(session, organ)
            try:
                self.rollout.serve(organ, default.model_name, default.version, [v.version for v in beside])
            except MedSegError as exc:
                logger.warning("%s: the organ servers may not serve what the registry names: %s", organ, exc)

    def _commit_with_rollout(
        self, session: Session, organ: str, new_default: ModelVersion, old_default: ModelVersion | None
    ) -> None:
        """Commit the session's pending change of default and move the organ servers' default with it, as one
        unit. The servers go first: when the rollout refuses or does not answer, the session is rolled back
        and nothing changed. When the commit then fails, the servers' default is set back to `old_default`
        before the error is raised, so they never serve a default the database does not name. Beside the
        default the servers keep serving what `served_beside` names (and, after a failed commit, the version
        that was to become the default too: serving one more version is harmless)."""
        target = (new_default.model_name, new_default.version)
        previous = (old_default.model_name, old_default.version) if old_default is not None else None
        also_serve = served_beside(session, organ, new_default)  # the session's pending states (autoflush)
        restore_also = [
            v for v in dict.fromkeys([*also_serve, new_default.version]) if v != (previous or target)[1]
        ]
        try:
            self.rollout.set_default(organ, *target, also_serve)
        except BaseException:
            session.rollback()
            raise
        try:
            session.commit()
        except Exception as exc:
            session.rollback()
            logger.error("%s: the database did not record the new default %s: %s", organ, target[1], exc)
            self._restore_default(organ, previous, target, restore_also)
            if isinstance(exc, OperationalError):
                raise database_unavailable(exc) from exc
            raise

    def _restore_default(self, organ: str, previous: tuple[str, str] | None, target, also_serve) -> None:
        if previous is None:
            logger.error(
                "%s: the organ servers' default is now %s %s, which the database does not record; there was "
                "no default before it to restore", organ, *target,
            )  # fmt: skip
            return
        try:
            self.rollout.set_default(organ, *previous, also_serve)
        except MedSegError as exc:
            fix = self.rollout.manual_fix(organ, *previous, also_serve)
            logger.error(
                "%s: the organ servers' default is %s %s but the database still names %s; restoring it "
                "failed (%s): run `%s`", organ, *target, previous[1], exc.message, fix,
            )  # fmt: skip
            raise ServiceUnavailable(
                f"the database did not record the change and the {organ} organ servers' default could not be "
                f"set back to {previous[1]} ({exc.message}); run `{fix}`",
                code="default_out_of_sync",
            ) from None
        logger.warning("%s: the organ servers' default restored to %s %s", organ, *previous)
