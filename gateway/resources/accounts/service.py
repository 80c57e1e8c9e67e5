"""People: registration, argon2 passwords, throttled sign-in, cookie sessions, approval and roles.

Transport-neutral: functions take a SQLAlchemy session, raise `common.errors` types and commit their own
writes together with the audit record. The HTTP edge (gateway/api/deps.py, gateway/api/cookies.py) only
moves cookies around.

Sessions: the browser holds a random 256-bit token in an HttpOnly cookie; the table stores its SHA-256
(the same reasoning as API keys in gateway/security.py: a leaked table gives no usable cookie). Each
session has its own CSRF token (synchronizer-token pattern), which server-rendered forms embed as a hidden
`csrf_token` field and scripts send as `X-CSRF-Token`.

Throttling: failed sign-ins are audit rows (`sign_in.failed`, actor = `ip:<client address>`, target = the
e-mail address). Within `sign_in_window_s`, sign-in is refused with 429 + Retry-After
* for one (address, account) pair after `sign_in_max_failures` failures of that pair — even with the right
  password, so guessing gains nothing; the same account from any other address is not affected, so a
  stranger cannot lock the owner out (there is no per-account lock at all);
* for one address after `sign_in_max_failures_per_address` failures against any accounts (one password
  tried against many accounts: password spraying).
Guessing from many addresses is bounded by the password rules (check_password) and argon2's cost.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from zxcvbn import zxcvbn

from common.errors import Conflict, Forbidden, InvalidInput, NotFound, TooManyRequests, Unauthenticated
from gateway import tenancy
from gateway.access import USERS_READ, USERS_WRITE
from gateway.models import LANGUAGES, ROLES, USER_STATUSES, AuditLog, User, UserSession, audit
from gateway.principal import Principal

logger = logging.getLogger(__name__)

SELF_SERVICE_ROLES = ("doctor", "researcher")  # admin is granted, never requested
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes anything, but an unbounded input is free CPU for an attacker
# zxcvbn's score (0 … 4) a password needs: 3 is "safely unguessable" (about 10^8 guesses or more), so
# repeats, sequences, keyboard walks, common passwords and the person's own address or name are refused.
MIN_PASSWORD_SCORE = 3
ZXCVBN_PREFIX = 100  # zxcvbn's time grows fast with length: score the first 100 characters (enough)
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class WeakPassword(InvalidInput):
    """A password that is too short or too easy to guess: 400, the message says why."""

    code = "weak_password"


class UnsupportedLanguage(InvalidInput):
    """A well-formed profile update naming a language the pages are not translated into: 422."""

    code, http_status = "unsupported_language", 422


_hasher = PasswordHasher()  # argon2id with the library's defaults (RFC 9106 low-memory profile)
# Verified when the address is unknown, so "no such user" costs the same time as "wrong password".
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def _now() -> datetime:
    return datetime.now(UTC)


def hash_password(password: str, user_inputs: tuple[str, ...] | list[str] = ()) -> str:
    check_password(password, user_inputs)
    return _hasher.hash(password)


def check_password(password: str, user_inputs: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse (WeakPassword) a password shorter than MIN_PASSWORD_LENGTH, longer than MAX_PASSWORD_LENGTH or
    with a zxcvbn score below MIN_PASSWORD_SCORE; `user_inputs` (the e-mail address, its local part, the
    name) count as known words, so a password made of them is refused too."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(
            f"password: use at least {MIN_PASSWORD_LENGTH} characters",
            code="password_too_short",
            params={"limit": MIN_PASSWORD_LENGTH},
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(
            f"password: at most {MAX_PASSWORD_LENGTH} characters",
            code="password_too_long",
            params={"limit": MAX_PASSWORD_LENGTH},
        )
    words = []
    for value in user_inputs:
        value = (value or "").strip().lower()
        if value:
            words += [value, *re.split(r"[@.\s_+-]+", value)]
    result = zxcvbn(password[:ZXCVBN_PREFIX], user_inputs=[w for w in words if w])
    if result["score"] < MIN_PASSWORD_SCORE:
        feedback = result.get("feedback") or {}
        hint = " ".join(filter(None, [feedback.get("warning"), *(feedback.get("suggestions") or [])]))
        raise WeakPassword(
            "password: too easy to guess (repeats, sequences, common words and your own name or address "
            "are the first guesses); use a longer passphrase of unrelated words"
            + (f". {hint}" if hint else "")
        )


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidInput(
            f"email: {email!r} is not an e-mail address", code="invalid_email", params={"email": email}
        )
    return email


def user_actor(user: User) -> str:
    """How a person appears in the audit log."""
    return f"user:{user.id}:{user.email}"


# --- accounts ------------------------------------------------------------------------------------------
def create_user(
    session: Session,
    *,
    email: str,
    password: str,
    full_name: str,
    role: str,
    status: str = "pending",
    title: str | None = None,
    department: str | None = None,
    hospital: str | None = None,
    actor: str = "self",
) -> User:
    """Create and commit a user (Conflict if the address is taken)."""
    email = normalise_email(email)
    full_name = (full_name or "").strip()
    if not full_name:
        raise InvalidInput("full_name: required", code="name_required")
    _check_role_and_status(role, status)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"an account for {email} already exists", code="email_taken")
    user = User(
        email=email,
        password_hash=hash_password(password, (email, full_name)),
        full_name=full_name,
        title=_clean(title),
        department=_clean(department),
        hospital=_clean(hospital),
        role=role,
        status=status,
        approved_at=_now() if status == "active" else None,
    )
    session.add(user)
    session.flush()
    audit(
        session,
        actor,
        "user.create",
        user_actor(user),
        {"role": role, "status": status},
        hospital=user.hospital,
    )
    session.commit()
    return user


def register(session: Session, *, role: str, **fields) -> User | None:
    """Self-service registration: a pending doctor or researcher account, usable once an admin approves.

    Says nothing about which addresses have accounts: every check that depends only on the request (role,
    address format, name, password strength) comes first, and a taken address then gets the same answer as
    a new one (None here, the same 202 at the edge), after the same argon2 work; the existing account is
    left exactly as it was and an audit record `user.register_taken` tells the admins.
    """
    if role not in SELF_SERVICE_ROLES:
        raise InvalidInput(
            f"role: choose one of {', '.join(SELF_SERVICE_ROLES)} (admins are appointed)",
            code="role_not_requestable",
        )
    email = normalise_email(fields.get("email", ""))
    if not (fields.get("full_name") or "").strip():
        raise InvalidInput("full_name: required", code="name_required")
    check_password(fields.get("password"), (email, fields.get("full_name") or ""))
    if (taken := session.scalar(select(User).where(User.email == email))) is not None:
        _hasher.hash(fields["password"])  # the time a new account's hash takes
        audit(session, "self", "user.register_taken", email, hospital=taken.hospital)
        session.commit()
        return None
    try:
        return create_user(session, role=role, status="pending", actor="self", **fields)
    except Conflict:  # registered by someone else a moment ago: the same answer
        session.rollback()
        return None


def ensure_admin(session: Session, email: str, password: str) -> User | None:
    """Create an active admin from `email`/`password` when the database has no admin yet (first start)."""
    if session.scalar(select(User.id).where(User.role == "admin")) is not None:
        return None
    user = create_user(
        session,
        email=email,
        password=password,
        full_name="Administrator",
        role="admin",
        status="active",
        actor="bootstrap",
    )
    logger.info("created the first admin %s", user.email)
    return user


def _check_role_and_status(role: str | None, status: str | None) -> None:
    """400 for a role or an account status that does not exist (None: not given)."""
    if role is not None and role not in ROLES:
        raise InvalidInput(
            f"role: {role!r} is not one of {', '.join(ROLES)}", code="invalid_role", params={"role": role}
        )
    if status is not None and status not in USER_STATUSES:
        raise InvalidInput(
            f"status: {status!r} is not one of {', '.join(USER_STATUSES)}",
            code="invalid_account_status",
            params={"status": status},
        )


def update_profile(session: Session, user: User, **fields: str | None) -> User:
    """A person edits their own name, title/position, department and the pages' language (hospital and role
    are admin-set)."""
    if "language" in fields and fields["language"] not in LANGUAGES:
        asked = str(fields["language"])[:20]
        raise UnsupportedLanguage(f"language must be one of {', '.join(LANGUAGES)}, not {asked!r}")
    for name in ("full_name", "title", "department"):
        if name in fields:
            value = _clean(fields[name])
            if name == "full_name" and not value:
                raise InvalidInput("full_name: cannot be empty", code="name_required")
            setattr(user, name, value)
    if "language" in fields:
        user.language = fields["language"]
    audit(session, user_actor(user), "user.profile", user_actor(user), {k: fields[k] for k in sorted(fields)})
    session.commit()
    return user


def change_password(
    session: Session, user: User, current: str, new: str, keep_session_id: int | None
) -> None:
    """Replace the password after checking the current one; ends the user's other sessions."""
    if not _verify(user.password_hash, current):
        raise Forbidden("the current password is wrong", code="wrong_password")
    user.password_hash = hash_password(new, (user.email, user.full_name))
    session.execute(
        delete(UserSession).where(UserSession.user_id == user.id, UserSession.id != (keep_session_id or -1))
    )
    audit(session, user_actor(user), "user.password", user_actor(user))
    session.commit()


def list_users(session: Session, status: str | None = None, by: Principal | None = None) -> list[User]:
    """Accounts, newest first: those `by` (an admin through the API) administers (access.USERS_READ: a
    hospital's admin, that hospital's); every account for the operator at the server (`by` None)."""
    query = select(User).order_by(User.created_at.desc(), User.id.desc())
    if by is not None:
        query = query.where(tenancy.where(by, USERS_READ))
    if status:
        _check_role_and_status(None, status)
        query = query.where(User.status == status)
    return list(session.scalars(query))


def administer_user(
    session: Session,
    by: Principal | None,
    user_id: int,
    *,
    role: str | None = None,
    status: str | None = None,
    hospital: str | None = None,
) -> User:
    """An admin approves/disables an account, assigns its role or hospital; each change is audited.

    `by`: the admin through the API, who reaches the accounts access.USERS_WRITE admits (another hospital's:
    404), may not disable or demote their own account (409 `own_account`: another admin can) and, unless a
    platform admin, may not move anybody to another hospital (403 `other_hospital`); None: the operator at
    the server (`medseg users set`), who reaches every account."""
    if by is None:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id}", code="unknown_user", params={"id": user_id})
    else:
        user = tenancy.get(
            session,
            by,
            USERS_WRITE,
            user_id,
            NotFound(f"no user {user_id}", code="unknown_user", params={"id": user_id}),
        )
    _check_role_and_status(role, status)
    loses_admin = (
        user.role == "admin"
        and user.status == "active"
        and ((role is not None and role != "admin") or (status is not None and status != "active"))
    )
    if by is not None:
        _refuse_beyond_the_admin(by, user, loses_admin, hospital)
    if loses_admin:
        admins = session.scalar(
            select(func.count()).select_from(User).where(User.role == "admin", User.status == "active")
        )
        if admins <= 1:
            raise Conflict("this is the last active admin; appoint another admin first", code="last_admin")
    actor = by.actor if by is not None else "cli"
    _apply_admin_changes(session, actor, user, role, status, hospital)
    session.commit()
    return user


def _refuse_beyond_the_admin(by: Principal, user: User, loses_admin: bool, hospital: str | None) -> None:
    """An admin does not lock themselves out (own_account), and only a platform admin moves people between
    hospitals (or out of every hospital, which would make an admin a platform admin)."""
    if by.user is not None and by.user.id == user.id and loses_admin:
        raise Conflict(
            "you cannot disable your own account or take away your own admin role; another admin can",
            code="own_account",
        )
    if hospital is not None and _clean(hospital) != user.hospital and tenancy.kind(by) != "platform":
        raise Forbidden(
            f"you administer {by.hospital}: only a platform admin moves people between hospitals",
            code="other_hospital",
        )


def _apply_admin_changes(
    session: Session, actor: str, user: User, role: str | None, status: str | None, hospital: str | None
) -> None:
    """Set what changed, each change with its audit entry (the account's hospital's; a move between
    hospitals is an entry of both)."""
    target = user_actor(user)
    if role is not None and role != user.role:
        audit(
            session,
            actor,
            "user.role_change",
            target,
            {"from": user.role, "to": role},
            hospital=user.hospital,
        )
        user.role = role
    if status is not None and status != user.status:
        action = "user.approve" if status == "active" and user.approved_at is None else "user.status_change"
        audit(session, actor, action, target, {"from": user.status, "to": status}, hospital=user.hospital)
        if status == "active" and user.approved_at is None:
            user.approved_at = _now()
        if status != "active":  # a disabled account is signed out everywhere at once
            session.execute(delete(UserSession).where(UserSession.user_id == user.id))
        user.status = status
    if hospital is not None and _clean(hospital) != user.hospital:
        moved = {"from": user.hospital, "to": _clean(hospital)}
        for concerned in dict.fromkeys((user.hospital, moved["to"])):
            audit(session, actor, "user.hospital_change", target, moved, hospital=concerned)
        user.hospital = moved["to"]


# --- sign-in ---------------------------------------------------------------------------------------------
def sign_in(
    session: Session,
    email: str,
    password: str,
    *,
    max_failures: int,
    window_s: int,
    ip: str | None = None,
    max_failures_per_address: int | None = None,
) -> tuple[User, bool]:
    """The active user with these credentials, and whether the account was approved since its last sign-in
    (so the pages tell the person once). Audits success and failure; throttles repeated failures per
    (client address, account) and per client address (module docstring).

    Raises TooManyRequests (throttled), Unauthenticated (wrong address or password: one message for both),
    Forbidden (right password, but the account is pending approval or disabled).
    """
    try:
        email = normalise_email(email)
    except InvalidInput:
        email = (email or "").strip().lower()[:254]
    _refuse_when_throttled(session, email, ip, max_failures, max_failures_per_address or 0, window_s)
    user = session.scalar(select(User).where(User.email == email))
    if not _verify(user.password_hash if user else _DUMMY_HASH, password) or user is None:
        audit(
            session, f"ip:{ip}", "sign_in.failed", email, {"ip": ip}, hospital=user.hospital if user else None
        )
        session.commit()
        raise Unauthenticated("wrong e-mail address or password", code="invalid_credentials")
    _refuse_inactive(session, user, email, ip)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    newly_approved = _approved_since_last_sign_in(session, user)
    user.last_sign_in_at = _now()
    audit(session, user_actor(user), "sign_in", email, {"ip": ip})
    session.commit()
    return user, newly_approved


def _approved_since_last_sign_in(session: Session, user: User) -> bool:
    """Whether an administrator approved the account (a registration, not an account made active) since it
    last signed in."""
    approvals = select(AuditLog.id).where(
        AuditLog.action == "user.approve", AuditLog.target == user_actor(user)
    )
    if user.last_sign_in_at is not None:
        approvals = approvals.where(AuditLog.at > user.last_sign_in_at)
    return session.scalar(approvals.limit(1)) is not None


def _refuse_when_throttled(
    session: Session, email: str, ip: str | None, max_failures: int, per_address: int, window_s: int
) -> None:
    """TooManyRequests (audited) when this address failed too often, for this account or for any."""
    since = _now() - timedelta(seconds=window_s)
    from_address = list(
        session.execute(
            select(AuditLog.at, AuditLog.target)
            .where(AuditLog.action == "sign_in.failed", AuditLog.actor == f"ip:{ip}", AuditLog.at >= since)
            .order_by(AuditLog.at)
        )
    )
    pair = [at for at, target in from_address if target == email]
    for failures, limit, what in (
        (pair, max_failures, f"for {email} from your address"),
        ([at for at, _ in from_address], per_address, "from your address"),
    ):
        if limit > 0 and len(failures) >= limit:
            oldest = failures[-limit]
            if oldest.tzinfo is None:  # SQLite gives naive UTC
                oldest = oldest.replace(tzinfo=UTC)
            retry_after = max(1, int((oldest - since).total_seconds()) + 1)
            audit(
                session,
                f"ip:{ip}",
                "sign_in.throttled",
                email,
                {"ip": ip},
                hospital=_hospital_of(session, email),
            )
            session.commit()
            raise TooManyRequests(
                f"too many failed sign-ins {what}; try again in {retry_after} s",
                retry_after_s=retry_after,
                code="too_many_sign_ins",
            )


def _hospital_of(session: Session, email: str) -> str | None:
    """The hospital of the account with this address (an attempt on it is its hospital's audit entry)."""
    return session.scalar(select(User.hospital).where(User.email == email))


def _refuse_inactive(session: Session, user: User, email: str, ip: str | None) -> None:
    """Forbidden (audited) for the right password on an account that is pending approval or disabled."""
    if user.status == "active":
        return
    audit(session, user_actor(user), "sign_in.refused", email, {"ip": ip, "status": user.status})
    session.commit()
    if user.status == "pending":
        raise Forbidden("this account awaits approval by an administrator", code="account_pending")
    raise Forbidden("this account is disabled", code="account_disabled")


def _verify(password_hash: str, password: str) -> bool:
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# --- sessions --------------------------------------------------------------------------------------------
def _token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


def start_session(
    session: Session,
    user: User,
    *,
    ttl: timedelta,
    ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[UserSession, str]:
    """A new session for `user`; returns (row, raw cookie token). The raw token is not stored."""
    raw = secrets.token_urlsafe(32)
    row = UserSession(
        token_hash=_token_hash(raw),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=_now() + ttl,
        ip=(ip or "")[:64] or None,
        user_agent=(user_agent or "")[:256] or None,
    )
    session.add(row)
    session.commit()
    return row, raw


def resolve_session(session: Session, raw_token: str) -> tuple[UserSession, User]:
    """The live session and its active user for a cookie token, else Unauthenticated."""
    row = session.scalar(select(UserSession).where(UserSession.token_hash == _token_hash(raw_token)))
    now = _now()
    if row is None or row.expires_at <= now:
        raise Unauthenticated("your session has expired or ended; sign in again", code="session_expired")
    user = session.get(User, row.user_id)
    if user is None or user.status != "active":
        raise Unauthenticated("this account can no longer sign in", code="session_expired")
    if row.last_seen_at is None or now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
        row.last_seen_at = now
        session.commit()
    return row, user


def end_session(session: Session, user_session: UserSession, user: User) -> None:
    session.delete(user_session)
    audit(session, user_actor(user), "sign_out", user.email)
    session.commit()


def csrf_matches(user_session: UserSession, presented: str | None) -> bool:
    return bool(presented) and secrets.compare_digest(user_session.csrf_token, presented)


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None
