"""The model registry's two consistency rules:

* the seed follows a changed shipped card (model-store/<organ>.json 1.0 → 1.1 under an existing database):
  the new version is recorded and, when the default was the shipped one, becomes the default, with lineage,
  model events and an audit entry; a default researchers promoted is left alone;
* promotion and rollback change TorchServe's default and the database as one unit: TorchServe refusing
  leaves the database as it was; a commit failing after TorchServe moved puts TorchServe's default back.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from common.errors import ServiceUnavailable
from gateway.core.db import session_scope
from gateway.models import AuditLog, ModelEvent, ModelVersion, User
from gateway.principal import Principal
from gateway.service import model_registry
from gateway.service.model_rollout import TorchServeRollout
from gateway.service.organs import OrganRegistry
from services.spec import SERVICES_DIR


@pytest.fixture
def engine(db_engine):
    """A fresh migrated database (tests/db/conftest.py: SQLite and PostgreSQL)."""
    return db_engine


def _ship(store_dir, version: str, **card) -> OrganRegistry:
    """model-store/ with a cells card at `version` (what replacing cells.mar + cells.json does)."""
    store_dir.mkdir(exist_ok=True)
    (store_dir / "cells.json").write_text(
        json.dumps({"model_name": "cells", "version": version, "default_threshold": 0.5, **card})
    )
    return OrganRegistry(SERVICES_DIR, store_dir)


def _versions(engine, organ="cells") -> dict[str, ModelVersion]:
    with session_scope(engine) as session:
        rows = session.scalars(select(ModelVersion).where(ModelVersion.organ == organ)).all()
        session.expunge_all()
        return {r.version: r for r in rows}


def _actions(engine, version_id: int) -> list[str]:
    with session_scope(engine) as session:
        return list(
            session.scalars(
                select(ModelEvent.action).where(ModelEvent.version_id == version_id).order_by(ModelEvent.id)
            )
        )


def _audit(engine, action: str) -> list[AuditLog]:
    with session_scope(engine) as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action == action)).all()
        session.expunge_all()
        return rows


# --- the seed follows a changed card ----------------------------------------------------------------------
def test_a_new_shipped_version_replaces_the_shipped_default(engine, tmp_path):
    store = tmp_path / "model-store"
    with session_scope(engine) as session:
        first = model_registry.seed_from_model_store(session, _ship(store, "1.0"))
    assert [(r.version, r.state) for r in first] == [("1.0", "default")]

    with session_scope(engine) as session:  # the same card again (a plain restart): nothing to do
        assert model_registry.seed_from_model_store(session, _ship(store, "1.0")) == []
    with session_scope(engine) as session:
        seeded = model_registry.seed_from_model_store(
            session, _ship(store, "1.1", metrics={"val_dice": 0.797})
        )
    assert [(r.version, r.state) for r in seeded] == [("1.1", "default")]

    versions = _versions(engine)
    old, new = versions["1.0"], versions["1.1"]
    assert (old.state, new.state) == ("retired", "default") and old.retired_at is not None
    assert new.parent_id == old.id and new.previous_default_id == old.id  # lineage, and rollback works
    assert new.metrics == {"val_dice": 0.797} and new.created_by == model_registry.SEED_ACTOR
    assert _actions(engine, new.id) == ["seeded"] and _actions(engine, old.id) == [
        "seeded",
        "replaced_by_shipped",
    ]
    [entry] = _audit(engine, "model.seed_default")
    assert entry.target == "model:cells:1.1" and entry.detail["previous_default"] == "1.0"

    directory = model_registry.ModelDirectory()
    with session_scope(engine) as session:
        directory.refresh(session, force=True)
    assert directory.get("cells").version == "1.1"  # what the gateway asks TorchServe for


def test_a_new_shipped_version_does_not_replace_a_promoted_default(engine, tmp_path):
    store = tmp_path / "model-store"
    with session_scope(engine) as session:
        model_registry.seed_from_model_store(session, _ship(store, "1.0"))
        shipped = session.scalar(select(ModelVersion).where(ModelVersion.version == "1.0"))
        shipped.state = "retired"
        session.add(
            ModelVersion(organ="cells", model_name="cells", version="2026.5", state="default",
                         parent_id=shipped.id, previous_default_id=shipped.id, created_by="user:7:r@x.org")
        )  # fmt: skip
    with session_scope(engine) as session:
        seeded = model_registry.seed_from_model_store(session, _ship(store, "1.1"))
    assert [(r.version, r.state) for r in seeded] == [("1.1", "candidate")]
    versions = _versions(engine)
    assert versions["2026.5"].state == "default" and versions["1.1"].parent_id == versions["2026.5"].id
    assert versions["1.1"].previous_default_id is None
    assert [e.target for e in _audit(engine, "model.seed_candidate")] == ["model:cells:1.1"]
    assert _audit(engine, "model.seed_default") == []


# --- promotion: TorchServe and the database move together -------------------------------------------------
class FlakyManagement:
    """TorchServe's management API: `fail` makes set_default refuse (from that call number on)."""

    def __init__(self, fail_from: int | None = None):
        self.defaults: list[tuple[str, str]] = []
        self.fail_from = fail_from

    @contextmanager
    def __call__(self, organ):
        yield self

    def set_default(self, model_name, version, timeout=None):
        if self.fail_from is not None and len(self.defaults) + 1 >= self.fail_from:
            raise ServiceUnavailable("connection refused")
        self.defaults.append((model_name, version))
        return "ok"


ADMIN = Principal(user=User(id=1, email="admin@example.org", role="admin"))
REASON = "the reference set is being rebuilt this week"


def liver_default_and_candidate(engine):
    """liver: version 1 the default, version 2 a candidate (no reference set: an admin forces)."""
    with session_scope(engine) as session:
        one = ModelVersion(organ="liver", model_name="liver", version="1", state="default", created_by="t")
        session.add(one)
        session.flush()
        session.add(ModelVersion(organ="liver", model_name="liver", version="2", state="candidate",
                                 parent_id=one.id, created_by="t"))  # fmt: skip
    return engine


@pytest.fixture
def registry(engine):
    return liver_default_and_candidate(engine)


def _promotions(management) -> model_registry.Promotions:
    rollout = TorchServeRollout(management)
    return model_registry.Promotions(None, rollout, model_registry.ModelDirectory(), max_dice_drop=0.02)


def _states(engine) -> dict[str, str]:
    return {v: row.state for v, row in _versions(engine, "liver").items()}


def _failing_commit(session):
    def commit():
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    session.commit = commit


def test_torchserve_refusing_leaves_the_database_unchanged(registry):
    mgmt = FlakyManagement(fail_from=1)
    with pytest.raises(ServiceUnavailable) as refused, session_scope(registry) as session:
        _promotions(mgmt).promote(session, ADMIN, "liver", "2", force=True, reason=REASON)
    assert refused.value.code == "organ_unavailable"
    assert _states(registry) == {"1": "default", "2": "candidate"} and mgmt.defaults == []
    assert _audit(registry, "model.promote") == []


def test_a_failed_commit_puts_torchserves_default_back(registry):
    mgmt = FlakyManagement()
    with pytest.raises(ServiceUnavailable) as failed, session_scope(registry) as session:
        _failing_commit(session)
        _promotions(mgmt).promote(session, ADMIN, "liver", "2", force=True, reason=REASON)
    assert "locked" in failed.value.message
    assert mgmt.defaults == [("liver", "2"), ("liver", "1")]  # moved, then put back
    assert _states(registry) == {"1": "default", "2": "candidate"}
    assert _audit(registry, "model.promote") == []


def test_a_failed_commit_whose_restore_fails_says_what_to_run(registry):
    mgmt = FlakyManagement(fail_from=2)  # the promotion's call works, the restoring one does not
    with pytest.raises(ServiceUnavailable) as failed, session_scope(registry) as session:
        _failing_commit(session)
        _promotions(mgmt).promote(session, ADMIN, "liver", "2", force=True, reason=REASON)
    assert failed.value.code == "default_out_of_sync"
    assert "medseg model set-default --organ liver --version 1" in failed.value.message
    assert mgmt.defaults == [("liver", "2")] and _states(registry) == {"1": "default", "2": "candidate"}


def test_rollback_follows_the_same_rule(registry):
    mgmt = FlakyManagement()
    promotions = _promotions(mgmt)
    with session_scope(registry) as session:
        promotions.promote(session, ADMIN, "liver", "2", force=True, reason=REASON)
    assert _states(registry) == {"1": "retired", "2": "default"} and mgmt.defaults == [("liver", "2")]

    mgmt.fail_from = 2  # TorchServe refuses the rollback: nothing changes
    with pytest.raises(ServiceUnavailable), session_scope(registry) as session:
        promotions.rollback(session, ADMIN, "liver", reason="worse on real cases")
    assert _states(registry) == {"1": "retired", "2": "default"}

    mgmt.fail_from = None  # the commit fails: TorchServe goes back to 2
    with pytest.raises(ServiceUnavailable), session_scope(registry) as session:
        _failing_commit(session)
        promotions.rollback(session, ADMIN, "liver", reason="worse on real cases")
    assert mgmt.defaults == [("liver", "2"), ("liver", "1"), ("liver", "2")]
    assert _states(registry) == {"1": "retired", "2": "default"}

    with session_scope(registry) as session:
        promotions.rollback(session, ADMIN, "liver", reason="worse on real cases")
    assert _states(registry) == {"1": "default", "2": "retired"} and mgmt.defaults[-1] == ("liver", "1")


# --- what an organ's servers serve (what every organ-server start loads, tools/stack.py) ------------------


def test_served_versions_are_the_default_the_rollback_target_and_the_newest_candidates(engine):
    with session_scope(engine) as session:
        assert model_registry.served_versions(session, "liver") == []  # no default yet: nothing recorded
        rows = {}
        for version, state in (("1", "retired"), ("2", "default"), ("c1", "candidate"), ("c2", "candidate"),
                               ("c3", "candidate"), ("c4", "candidate"), ("0", "retired")):  # fmt: skip
            rows[version] = ModelVersion(organ="liver", model_name="liver", version=version, state=state,
                                         created_by="test")  # fmt: skip
            session.add(rows[version])
            session.flush()
        rows["2"].previous_default_id = rows["1"].id
        session.add(ModelVersion(organ="cells", model_name="cells", version="c9", state="candidate",
                                 created_by="test"))  # fmt: skip
        session.flush()
        served = [r.version for r in model_registry.served_versions(session, "liver")]
    # the default, then the one a rollback restores, then the newest MAX_SERVED_CANDIDATES candidates
    assert served == ["2", "1", "c4", "c3", "c2"]
    assert model_registry.MAX_SERVED_CANDIDATES == 3
