"""API keys over HTTP (/api/v1/api-keys): list, create (the secret shown once), revoke."""

from fastapi import APIRouter, status

from gateway.api.deps import SessionDep, caller
from gateway.resources.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic
from gateway.security import create_api_key, list_api_keys, revoke_api_key

router = APIRouter(prefix="/api-keys", tags=["api keys"])

ListKeysCaller = caller("keys.list")
CreateKeyCaller = caller("keys.create")
RevokeKeyCaller = caller("keys.revoke")


@router.get("", response_model=ApiKeysPublic)
def list_keys(_admin: ListKeysCaller, session: SessionDep) -> ApiKeysPublic:
    """Keys by prefix with scopes, expiry and last use (secrets are never stored)."""
    return ApiKeysPublic(api_keys=[ApiKeyPublic.model_validate(k) for k in list_api_keys(session)])


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, admin: CreateKeyCaller, session: SessionDep) -> ApiKeyCreated:
    """Create a key; the response is the only time the whole key is shown."""
    row, raw = create_api_key(
        session, body.name, body.scopes, body.expires_at, actor=admin.actor, hospital=body.hospital
    )
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row).model_dump(), key=raw)


@router.delete("/{prefix}", response_model=ApiKeyPublic)
def revoke_key(prefix: str, admin: RevokeKeyCaller, session: SessionDep) -> ApiKeyPublic:
    """Revoke a key by its prefix (idempotent)."""
    return ApiKeyPublic.model_validate(revoke_api_key(session, prefix, actor=admin.actor))
