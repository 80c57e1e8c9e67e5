"""API keys: creation, authentication, scopes, expiry, revocation, and the `medseg api-key` CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from common.settings import get_settings
from gateway.models import AuditLog
from gateway.security import (
    authenticate_api_key,
    create_api_key,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
)


def test_created_key_is_shown_once_and_only_its_hash_is_stored(db_session):
    row, raw = create_api_key(db_session, "pacs", "segment,evaluate")
    assert raw.startswith(f"msk_{row.prefix}_") and len(raw) > 40
    assert row.hashed_secret == hash_api_key(raw) and raw not in row.hashed_secret
    assert row.scopes == ["evaluate", "segment"]
    assert db_session.query(AuditLog).filter_by(action="api_key.create", target=row.prefix).count() == 1


def test_valid_key_authenticates_and_records_last_use(db_session):
    row, raw = create_api_key(db_session, "pacs", ["segment"])
    assert row.last_used_at is None
    assert authenticate_api_key(db_session, raw, "segment").id == row.id
    assert row.last_used_at is not None


@pytest.mark.parametrize("presented", [None, "", "Bearer", "msk_only", "abc_12345678_secret"])
def test_missing_or_malformed_keys_are_unauthenticated(db_session, presented):
    with pytest.raises(Unauthenticated):
        authenticate_api_key(db_session, presented, "segment")


def test_wrong_secret_or_unknown_prefix_is_unauthenticated(db_session):
    row, raw = create_api_key(db_session, "pacs", ["segment"])
    with pytest.raises(Unauthenticated, match="unknown"):
        authenticate_api_key(db_session, raw[:-2] + ("AA" if not raw.endswith("AA") else "BB"), "segment")
    with pytest.raises(Unauthenticated, match="unknown"):
        authenticate_api_key(db_session, f"msk_ffffffff_{raw.split('_', 2)[2]}", "segment")


def test_missing_scope_is_forbidden_and_admin_grants_everything(db_session):
    _, raw = create_api_key(db_session, "viewer", ["evaluate"])
    with pytest.raises(Forbidden, match="segment"):
        authenticate_api_key(db_session, raw, "segment")
    _, admin = create_api_key(db_session, "ops", ["admin"])
    assert authenticate_api_key(db_session, admin, "train")


def test_expired_key_is_unauthenticated(db_session):
    _, raw = create_api_key(
        db_session, "old", ["segment"], expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(Unauthenticated, match="expired"):
        authenticate_api_key(db_session, raw, "segment")
    _, fresh = create_api_key(
        db_session, "new", ["segment"], expires_at=datetime.now(UTC) + timedelta(days=1)
    )
    assert authenticate_api_key(db_session, fresh, "segment")


def test_revoked_key_is_unauthenticated(db_session):
    row, raw = create_api_key(db_session, "gone", ["segment"])
    revoke_api_key(db_session, row.prefix)
    with pytest.raises(Unauthenticated, match="revoked"):
        authenticate_api_key(db_session, raw, "segment")
    with pytest.raises(NotFound):
        revoke_api_key(db_session, "00000000")


def test_bad_scopes_and_names_are_invalid_input(db_session):
    with pytest.raises(InvalidInput, match="valid scopes"):
        create_api_key(db_session, "x", "segment,root")
    with pytest.raises(InvalidInput):
        create_api_key(db_session, "x", "")
    with pytest.raises(InvalidInput):
        create_api_key(db_session, "  ", "segment")


def test_cli_create_list_revoke(tmp_path, monkeypatch, capsys):
    from common.cli import main
    from gateway.core.db import make_engine, session_scope

    monkeypatch.setenv("MEDSEG_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MEDSEG_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert (
            main(
                ["api-key", "create", "--name", "ris", "--scopes", "segment,evaluate", "--expires-days", "7"]
            )
            == 0
        )
        raw = capsys.readouterr().out.strip()
        assert raw.startswith("msk_")
        engine = make_engine(get_settings().sqlalchemy_url)
        with session_scope(engine) as session:
            row = authenticate_api_key(session, raw, "evaluate")
            assert row.expires_at > datetime.now(UTC) + timedelta(days=6)

        assert main(["api-key", "list"]) == 0
        listing = capsys.readouterr().out
        assert row.prefix in listing and raw.split("_", 2)[2] not in listing

        assert main(["api-key", "revoke", row.prefix]) == 0
        with session_scope(engine) as session:
            assert [k.revoked_at is not None for k in list_api_keys(session)] == [True]
        assert main(["api-key", "create", "--name", "x", "--scopes", "nope"]) == 2
        engine.dispose()
    finally:
        get_settings.cache_clear()
