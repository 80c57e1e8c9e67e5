"""API keys through the API, for both edges' admins: the keys of the admin's hospital (a platform admin: all),
by the access table's rows (access.KEYS_READ, KEYS_REVOKE; another hospital's key is a 404). Making and
checking keys is gateway/security.py, which the operator's CLI (`medseg api-keys`) calls without a scope."""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.errors import Forbidden, NotFound
from gateway import tenancy
from gateway.access import KEYS_READ, KEYS_REVOKE
from gateway.models import ApiKey
from gateway.principal import Principal
from gateway.resources.keys.schemas import ApiKeyCreate
from gateway.security import create_api_key, key_prefix, list_api_keys, revoke_api_key


def list_keys(session: Session, admin: Principal) -> list[ApiKey]:
    """The keys the admin reaches, newest first (rows carry the prefix and metadata, never a secret)."""
    return list_api_keys(session, visible=tenancy.where(admin, KEYS_READ))


def create_key(session: Session, admin: Principal, body: ApiKeyCreate) -> tuple[ApiKey, str]:
    """A key of the admin's hospital (a platform admin names any hospital, or none: a platform key).
    Another hospital is a 403 (`other_hospital`): that hospital's admins make its keys."""
    hospital = (body.hospital or "").strip() or None
    if tenancy.kind(admin) != "platform":
        if hospital not in (None, admin.hospital):
            raise Forbidden(
                f"you administer {admin.hospital}: keys of {hospital} are made by its admins or a platform "
                "admin",
                code="other_hospital",
            )
        hospital = admin.hospital  # never a key without a hospital: that would be a platform key
    return create_api_key(
        session, body.name, body.scopes, body.expires_at, actor=admin.actor, hospital=hospital
    )


def revoke_key(session: Session, admin: Principal, prefix: str) -> ApiKey:
    """Revoke a key the admin reaches, by its prefix (or the whole key); idempotent; 404 for any other."""
    prefix = key_prefix(prefix)
    tenancy.get(
        session,
        admin,
        KEYS_REVOKE,
        prefix,
        NotFound(f"no API key with prefix {prefix!r}", code="unknown_key", params={"prefix": prefix}),
    )
    return revoke_api_key(session, prefix, actor=admin.actor)
