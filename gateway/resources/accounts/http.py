"""People's accounts over HTTP: registering, signing in and out, one's profile and password
(/api/v1/auth, /api/v1/users/me) and administering accounts (/api/v1/users)."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from gateway.api.cookies import clear_session_cookies, set_session_cookies
from gateway.api.deps import SessionDep, SettingsDep, caller
from gateway.resources.accounts import service
from gateway.resources.accounts.schemas import (
    PasswordChange,
    ProfileUpdate,
    RegistrationAccepted,
    SessionPublic,
    SignIn,
    Status,
    UserAdminUpdate,
    UserPublic,
    UserRegister,
    UsersPublic,
)
from gateway.resources.shared import RowId

router = APIRouter(tags=["accounts"])

SignOutCaller = caller("accounts.sign_out")
MeCaller = caller("accounts.me")
UpdateMeCaller = caller("accounts.update_me")
ChangePasswordCaller = caller("accounts.change_password")


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/auth/register", response_model=RegistrationAccepted, status_code=status.HTTP_202_ACCEPTED)
def register(body: UserRegister, session: SessionDep) -> RegistrationAccepted:
    """Ask for a pending doctor or researcher account; an admin approves it. The answer is the same 202
    whether or not the address already has an account (nothing about an existing account is revealed)."""
    service.register(session, **body.model_dump())
    return RegistrationAccepted(email=service.normalise_email(body.email))


@router.post("/auth/sign-in", response_model=SessionPublic)
def sign_in(
    body: SignIn, request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> SessionPublic:
    """Check the password and start a cookie session; returns the session's CSRF token."""
    user, newly_approved = service.sign_in(
        session,
        body.email,
        body.password,
        max_failures=settings.sign_in_max_failures,
        window_s=settings.sign_in_window_s,
        ip=_ip(request),
        max_failures_per_address=settings.sign_in_max_failures_per_address,
    )
    user_session, raw = service.start_session(
        session,
        user,
        ttl=timedelta(hours=settings.session_ttl_hours),
        ip=_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    set_session_cookies(response, request, settings, raw, user_session)
    return SessionPublic(
        user=UserPublic.model_validate(user),
        csrf_token=user_session.csrf_token,
        expires_at=user_session.expires_at,
        newly_approved=newly_approved,
    )


@router.post("/auth/sign-out", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(
    principal: SignOutCaller, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """End this session and clear its cookies."""
    service.end_session(session, principal.session, principal.user)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(response, request, settings)
    return response


@router.get("/users/me", response_model=SessionPublic)
def me(principal: MeCaller) -> SessionPublic:
    """Who is signed in, with the session's CSRF token (for pages that need it again)."""
    return SessionPublic(
        user=UserPublic.model_validate(principal.user),
        csrf_token=principal.session.csrf_token,
        expires_at=principal.session.expires_at,
    )


@router.patch("/users/me", response_model=UserPublic)
def update_me(body: ProfileUpdate, principal: UpdateMeCaller, session: SessionDep) -> UserPublic:
    """Edit one's own name, title/position, department and the pages' language (en or zh, else 422)."""
    user = session.merge(principal.user)
    return UserPublic.model_validate(
        service.update_profile(session, user, **body.model_dump(exclude_unset=True))
    )


@router.post("/users/me/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(body: PasswordChange, principal: ChangePasswordCaller, session: SessionDep) -> Response:
    """Replace one's password (the current one is required); other sessions end."""
    service.change_password(
        session,
        principal.user,
        body.current_password,
        body.new_password,
        keep_session_id=principal.session.id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- administering people's accounts ------------------------------------------------------------------------
users_router = APIRouter(prefix="/users", tags=["users"])

ListUsersCaller = caller("users.list")
AdministerUserCaller = caller("users.administer")


@users_router.get("", response_model=UsersPublic)
def list_users(
    admin: ListUsersCaller, session: SessionDep, status: Annotated[Status | None, Query()] = None
) -> UsersPublic:
    """Accounts the admin administers (a hospital's admin: that hospital's), newest first; `?status=pending`
    lists those awaiting approval."""
    users = service.list_users(session, status, by=admin)
    return UsersPublic(users=[UserPublic.model_validate(u) for u in users])


@users_router.patch("/{user_id}", response_model=UserPublic)
def administer_user(
    user_id: RowId, body: UserAdminUpdate, admin: AdministerUserCaller, session: SessionDep
) -> UserPublic:
    """Approve or disable an account, assign its role or hospital (another hospital: a platform admin's)."""
    user = service.administer_user(session, admin, user_id, **body.model_dump(exclude_unset=True))
    return UserPublic.model_validate(user)
