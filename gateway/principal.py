"""Who is asking: a signed-in person (with a role) or a hospital system's API key (with scopes).

Each operation has an `Access` (which roles, which scopes) in the access table (gateway/access.py);
gateway/api/deps.py's `require` turns it into a typed FastAPI dependency that authenticates the caller and
checks the access in one place, the gRPC servicers check the same entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import Forbidden
from gateway.models import ApiKey, User, UserSession
from gateway.security import ADMIN_SCOPE


@dataclass(frozen=True)
class Principal:
    """Exactly one of `user` / `api_key` is set."""

    user: User | None = None
    api_key: ApiKey | None = None
    session: UserSession | None = None  # the browser session a user came with

    @property
    def actor(self) -> str:
        """How this caller appears in the audit log."""
        if self.user is not None:
            return f"user:{self.user.id}:{self.user.email}"
        return f"api-key:{self.api_key.prefix}"

    @property
    def role(self) -> str | None:
        return self.user.role if self.user is not None else None

    @property
    def hospital(self) -> str | None:
        return self.user.hospital if self.user is not None else self.api_key.hospital

    @property
    def is_admin(self) -> bool:
        if self.user is not None:
            return self.user.role == "admin"
        return ADMIN_SCOPE in self.api_key.scopes


@dataclass(frozen=True)
class Access:
    """Who may call a route: people with one of `roles`, API keys with one of `scopes` (admin: any)."""

    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.roles:
            parts.append("role " + " or ".join(self.roles))
        if self.scopes:
            parts.append("an API key with scope " + " or ".join(self.scopes))
        return " or ".join(parts) or "nobody"

    def check_role(self, user: User) -> None:
        if user.role not in self.roles:
            raise Forbidden(
                f"this needs {self.describe()}; you are signed in as a {user.role}",
                code="forbidden",
                params={"role": user.role},
            )
