"""API keys over HTTP (/api/v1/api-keys): list, create (the secret shown once), revoke."""

from fastapi import APIRouter, status

from gateway.api.deps import SessionDep, caller
from gateway.resources.keys import service
from gateway.resources.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic

router = APIRouter(prefix="/api-keys", tags=["api keys"])

ListKeysCaller = caller("keys.list")
CreateKeyCaller = caller("keys.create")
RevokeKeyCaller = caller("keys.revoke")


@router.get("", response_model=ApiKeysPublic)
def list_keys(admin: ListKeysCaller, session: SessionDep) -> ApiKeysPublic:
    """Keys of the admin's hospital (a platform admin: all) by prefix, with scopes, expiry and last use."""
    return ApiKeysPublic(api_keys=[ApiKeyPublic.model_validate(k) for k in service.list_keys(session, admin)])


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, admin: CreateKeyCaller, session: SessionDep) -> ApiKeyCreated:
    """Create a key of the admin's hospital (a platform admin: of any, or none); the response is the only
    time the whole key is shown."""
    row, raw = service.create_key(session, admin, body)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row).model_dump(), key=raw)


@router.delete("/{prefix}", response_model=ApiKeyPublic)
def revoke_key(prefix: str, admin: RevokeKeyCaller, session: SessionDep) -> ApiKeyPublic:
    """Revoke a key of the admin's hospital by its prefix (idempotent)."""
    return ApiKeyPublic.model_validate(service.revoke_key(session, admin, prefix))
