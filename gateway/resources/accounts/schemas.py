"""HTTP shapes of people's accounts: registering, signing in, one's profile, administering users."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.resources.shared import optional_text

Role = Literal["doctor", "researcher", "admin"]


Status = Literal["pending", "active", "disabled"]


class UserRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    full_name: str = Field(max_length=200)
    title: str | None = optional_text
    department: str | None = optional_text
    hospital: str | None = optional_text
    role: Literal["doctor", "researcher"]


class RegistrationAccepted(BaseModel):
    """The answer to every well-formed registration, whether or not the address already has an account."""

    email: str
    status: Literal["pending"] = "pending"
    message: str = (
        "Thank you. If this address can be registered, the account now awaits approval by an administrator;"
        " you can sign in once it is approved."
    )


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class ProfileUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full_name: str | None = optional_text
    title: str | None = optional_text
    department: str | None = optional_text
    # any text here: accounts.update_profile answers 422 for a language the pages are not translated into
    language: str | None = Field(default=None, description="the web pages' language: en or zh")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class UserAdminUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    status: Status | None = None
    hospital: str | None = optional_text


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    email: str
    full_name: str
    title: str | None
    department: str | None
    hospital: str | None
    role: Role
    status: Status
    created_at: datetime
    approved_at: datetime | None
    last_sign_in_at: datetime | None
    language: str | None = None


class UsersPublic(BaseModel):
    users: list[UserPublic]


class SessionPublic(BaseModel):
    """What a browser gets at sign-in: who it is and the CSRF token for its unsafe requests."""

    user: UserPublic
    csrf_token: str
    expires_at: datetime
    newly_approved: bool = False  # approved by an administrator since this account last signed in
