"""API keys for hospital systems: `msk_<prefix>_<secret>`, shown once; only a SHA-256 of the key is stored.

Why SHA-256 and not argon2/bcrypt: a slow, salted hash protects *low-entropy* secrets (passwords people
choose) against offline guessing. Our secrets are 256 random bits from `secrets`, so guessing is already
infeasible and a plain SHA-256 gives the same protection if the table leaks, while costing microseconds
instead of ~50 ms of CPU on every API request. The prefix (public, unique, indexed) finds the row; the
hash comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from common.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from gateway.models import ApiKey, audit

KEY_SCHEME = "msk"
KNOWN_SCOPES = ("segment", "evaluate", "datasets", "models", "train", "feedback", "admin")
ADMIN_SCOPE = "admin"  # grants every scope
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write per key per minute, not one per request


def _now() -> datetime:
    return datetime.now(UTC)


def hash_api_key(raw_key: str) -> str:
    """Hex SHA-256 of the whole raw key (see the module docstring for why no slow hash)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def parse_scopes(scopes: str | Iterable[str]) -> list[str]:
    """Validate scopes ("segment,evaluate" or a list); InvalidInput names the valid ones."""
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    cleaned = sorted({s.strip() for s in items if s and s.strip()})
    if not cleaned:
        raise InvalidInput(
            f"an API key needs at least one scope; valid scopes: {', '.join(KNOWN_SCOPES)}",
            code="key_scopes_missing",
        )
    unknown = [s for s in cleaned if s not in KNOWN_SCOPES]
    if unknown:
        raise InvalidInput(
            f"unknown scope(s) {', '.join(unknown)}; valid scopes: {', '.join(KNOWN_SCOPES)}",
            code="unknown_scope",
            params={"scopes": ", ".join(unknown)},
        )
    return cleaned


def create_api_key(
    session: Session,
    name: str,
    scopes: str | Iterable[str],
    expires_at: datetime | None = None,
    *,
    actor: str = "cli",
    hospital: str | None = None,
) -> tuple[ApiKey, str]:
    """Create and commit a key; returns (row, raw_key). The raw key is not stored: show it once."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("an API key needs a name (who or what uses it)", code="key_name_missing")
    scope_list = parse_scopes(scopes)
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidInput(
            "expires_at must be timezone-aware (UTC)",
            code="invalid_input",
            params={"field": "expires_at", "rule": "invalid"},
        )
    while True:  # 32-bit prefixes: a collision is rare but possible, and the prefix must stay unique
        prefix = secrets.token_hex(4)
        if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            break
    raw_key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name,
        prefix=prefix,
        hashed_secret=hash_api_key(raw_key),
        scopes=scope_list,
        expires_at=expires_at,
        hospital=(hospital or "").strip() or None,
    )
    session.add(row)
    audit(
        session,
        actor,
        "api_key.create",
        prefix,
        {
            "name": name,
            "scopes": scope_list,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "hospital": row.hospital,
        },
        hospital=row.hospital,
    )
    session.commit()
    return row, raw_key


def authenticate_api_key(session: Session, raw_key: str | None, required_scope: str) -> ApiKey:
    """The key's row if `raw_key` is valid and grants `required_scope`.

    Raises Unauthenticated (missing, malformed, unknown, revoked, expired) or Forbidden (scope missing).
    Updates last_used_at and appends an `api_key.use` audit record (both at most once a minute per key, so
    the audit log shows when a key was in use without one row per request) and commits them.
    """
    if required_scope not in KNOWN_SCOPES:
        raise ValueError(f"unknown scope {required_scope!r}; valid: {', '.join(KNOWN_SCOPES)}")
    if not raw_key:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer msk_...'", code="unauthenticated")
    parts = raw_key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1] or not parts[2]:
        raise Unauthenticated("malformed API key: expected 'msk_<prefix>_<secret>'", code="unauthenticated")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    # compare_digest even when the prefix is unknown, so both paths take about the same time
    expected = row.hashed_secret if row is not None else "0" * 64
    if not hmac.compare_digest(expected, hash_api_key(raw_key.strip())) or row is None:
        raise Unauthenticated("unknown API key", code="unauthenticated")
    now = _now()
    if row.revoked_at is not None:
        raise Unauthenticated(f"API key {row.prefix} was revoked", code="unauthenticated")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(
            f"API key {row.prefix} expired at {row.expires_at.isoformat()}", code="unauthenticated"
        )
    if required_scope not in row.scopes and ADMIN_SCOPE not in row.scopes:
        raise Forbidden(
            f"API key {row.prefix} lacks scope '{required_scope}' (it has: {', '.join(row.scopes)})",
            code="forbidden",
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
        audit(session, f"api-key:{row.prefix}", "api_key.use", row.prefix, {"scope": required_scope})
        session.commit()
    return row


def list_api_keys(
    session: Session, include_revoked: bool = True, visible: ColumnElement[bool] | None = None
) -> list[ApiKey]:
    """Keys, newest first (rows carry the prefix and metadata, never a secret); `visible`: only those (the
    API's admins: their hospital's, gateway/resources/keys/service.py)."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    if visible is not None:
        query = query.where(visible)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def key_prefix(prefix_or_key: str) -> str:
    """The prefix a key is named by, from the prefix itself or a whole key."""
    value = prefix_or_key.strip()
    return value.split("_", 2)[1] if value.startswith(f"{KEY_SCHEME}_") else value


def revoke_api_key(session: Session, prefix: str, *, actor: str = "cli") -> ApiKey:
    """Revoke the key with this prefix (or the whole key; idempotent); NotFound when there is none."""
    prefix = key_prefix(prefix)
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise NotFound(f"no API key with prefix {prefix!r}", code="unknown_key", params={"prefix": prefix})
    if row.revoked_at is None:
        row.revoked_at = _now()
        audit(session, actor, "api_key.revoke", prefix, {"name": row.name}, hospital=row.hospital)
        session.commit()
    return row


# --- the API key a request carries (HTTP header or gRPC metadata) -------------------------------------------
def bearer_token(authorization: str | None) -> str:
    """The key from an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata)."""
    if not authorization:
        raise Unauthenticated("send an API key: Authorization: Bearer <key>", code="missing_credentials")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <key>'", code="invalid_credentials")
    return token.strip()


def authorize(session: Session, authorization: str | None, scopes: tuple[str, ...]) -> ApiKey:
    """The API key from an Authorization value if it grants any of `scopes` (Unauthenticated / Forbidden)."""
    raw_key = bearer_token(authorization)
    for scope in scopes[:-1]:
        try:
            return authenticate_api_key(session, raw_key, scope)
        except Forbidden:
            continue
    try:
        return authenticate_api_key(session, raw_key, scopes[-1])
    except Forbidden:
        if len(scopes) == 1:
            raise
        raise Forbidden(
            f"this API key needs one of the scopes {', '.join(scopes)}", code="forbidden"
        ) from None
