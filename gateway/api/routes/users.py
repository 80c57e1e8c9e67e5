from typing import Annotated

from fastapi import APIRouter, Depends, Query

from gateway import accounts
from gateway.access import ACCESS
from gateway.api.deps import SessionDep, require
from gateway.principal import Principal
from gateway.resources.accounts.schemas import Status, UserAdminUpdate, UserPublic, UsersPublic
from gateway.resources.shared import RowId

router = APIRouter(prefix="/users", tags=["users"])

ListUsersCaller = Annotated[Principal, Depends(require(ACCESS["users.list"]))]
AdministerUserCaller = Annotated[Principal, Depends(require(ACCESS["users.administer"]))]


@router.get("", response_model=UsersPublic)
def list_users(
    _admin: ListUsersCaller, session: SessionDep, status: Annotated[Status | None, Query()] = None
) -> UsersPublic:
    """Accounts, newest first; `?status=pending` lists those awaiting approval."""
    return UsersPublic(users=[UserPublic.model_validate(u) for u in accounts.list_users(session, status)])


@router.patch("/{user_id}", response_model=UserPublic)
def administer_user(
    user_id: RowId, body: UserAdminUpdate, admin: AdministerUserCaller, session: SessionDep
) -> UserPublic:
    """Approve or disable an account, assign its role or hospital."""
    user = accounts.administer_user(session, admin.actor, user_id, **body.model_dump(exclude_unset=True))
    return UserPublic.model_validate(user)
