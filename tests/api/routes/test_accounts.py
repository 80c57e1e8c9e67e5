"""Accounts over HTTP: registration and approval, sign-in with cookies, CSRF, throttling, sign-out,
profile, roles; the `medseg user` CLI and the first admin from the environment."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from common.errors import Conflict
from gateway.models import AuditLog, User, UserSession
from gateway.resources.accounts.service import administer_user

PASSWORD = "a long enough password"


def _register(world, role="doctor", **extra) -> dict:
    """Register over HTTP (202, the same answer for any address) and return the account as admins see it."""
    email = f"p-{uuid.uuid4().hex[:8]}@example.org"
    body = {"email": email, "password": PASSWORD, "full_name": "Ada Person", "role": role,
            "hospital": "St. Anna", **extra}  # fmt: skip
    response = world.client("anonymous").post("/api/v1/auth/register", json=body)
    assert response.status_code == 202, response.text
    pending = world.client("admin").get("/api/v1/users", params={"status": "pending"}).json()["users"]
    return next(u for u in pending if u["email"] == email)


def _audit_count(world, action: str, target: str | None = None) -> int:
    with world.session() as session:
        query = select(func.count()).select_from(AuditLog).where(AuditLog.action == action)
        if target:
            query = query.where(AuditLog.target == target)
        return session.scalar(query)


def test_register_approve_sign_in_profile_sign_out(world):
    user = _register(world, title="Radiologist")
    assert (user["status"], user["role"], user["title"]) == ("pending", "doctor", "Radiologist")
    anonymous = world.client("anonymous")
    credentials = {"email": user["email"].upper(), "password": PASSWORD}  # addresses are case-insensitive
    refused = anonymous.post("/api/v1/auth/sign-in", json=credentials)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "account_pending"

    approved = world.client("admin").patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
    assert approved.status_code == 200 and approved.json()["approved_at"]
    assert _audit_count(world, "user.approve", f"user:{user['id']}:{user['email']}") == 1

    response = anonymous.post("/api/v1/auth/sign-in", json=credentials)
    assert response.status_code == 200, response.text
    cookies = response.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith(world.settings.session_cookie_name + "="))
    assert (
        "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie and "Secure" not in session_cookie
    )
    csrf = response.json()["csrf_token"]
    assert _audit_count(world, "sign_in", user["email"]) == 1

    assert anonymous.get("/api/v1/users/me").json()["user"]["email"] == user["email"]
    edited = anonymous.patch("/api/v1/users/me", json={"department": "Radiology", "full_name": "Ada P."},
                             headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert edited.status_code == 200 and edited.json()["department"] == "Radiology"
    # the hospital (which decides what a doctor sees) is not self-service
    assert (
        anonymous.patch(
            "/api/v1/users/me", json={"hospital": "X"}, headers={"X-CSRF-Token": csrf}
        ).status_code
        == 400
    )

    assert anonymous.post("/api/v1/auth/sign-out", headers={"X-CSRF-Token": csrf}).status_code == 204
    gone = anonymous.get("/api/v1/users/me")
    assert gone.status_code == 401


def test_cookies_are_secure_behind_tls(world):
    user = _register(world)
    world.client("admin").patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
    client = world.client("anonymous", base_url="https://testserver")
    response = client.post("/api/v1/auth/sign-in", json={"email": user["email"], "password": PASSWORD})
    assert response.status_code == 200
    assert all("Secure" in c for c in response.headers.get_list("set-cookie"))


def test_csrf_token_from_a_server_rendered_form_field(world):
    client = world.client("researcher", csrf=False)
    token = client.get("/api/v1/users/me").json()["csrf_token"]
    wrong = client.post("/api/v1/auth/sign-out", data={"csrf_token": "nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "csrf_failed"
    assert client.post("/api/v1/auth/sign-out", data={"csrf_token": token}).status_code == 204


def test_sign_in_is_throttled_after_repeated_failures(world):
    user = _register(world)
    world.client("admin").patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
    client = world.client("anonymous")
    for _ in range(world.settings.sign_in_max_failures):
        wrong = client.post(
            "/api/v1/auth/sign-in", json={"email": user["email"], "password": "wrong password!"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    # now even the right password waits: guessing gains nothing
    throttled = client.post("/api/v1/auth/sign-in", json={"email": user["email"], "password": PASSWORD})
    assert throttled.status_code == 429, throttled.text
    assert 0 < int(throttled.headers["Retry-After"]) <= world.settings.sign_in_window_s
    assert _audit_count(world, "sign_in.failed", user["email"]) == world.settings.sign_in_max_failures
    # an unknown address reads the same as a wrong password
    unknown = client.post("/api/v1/auth/sign-in", json={"email": "nobody@example.org", "password": PASSWORD})
    assert (
        unknown.status_code == 401 and unknown.json()["error"]["message"] == wrong.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    "change, status, code",
    [
        ({"role": "admin"}, 400, "invalid_input"),  # admins are appointed, never requested
        ({"password": "short"}, 400, "password_too_short"),
        ({"email": "not-an-address"}, 400, "invalid_email"),
        ({"extra": "field"}, 400, "invalid_input"),
    ],
)
def test_bad_registrations_are_400(world, change, status, code):
    body = {"email": f"x-{uuid.uuid4().hex[:6]}@example.org", "password": PASSWORD, "full_name": "X",
            "role": "doctor", **change}  # fmt: skip
    response = world.client("anonymous").post("/api/v1/auth/register", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_registering_a_taken_address_answers_as_for_a_new_one(world):
    # was a 409 email_taken, which told anyone which addresses have accounts (issue 15, finding 9)
    user = _register(world)
    again = world.client("anonymous").post(
        "/api/v1/auth/register",
        json={"email": user["email"], "password": PASSWORD, "full_name": "Y", "role": "researcher"},
    )
    assert again.status_code == 202 and again.json()["email"] == user["email"]
    assert _audit_count(world, "user.register_taken", user["email"]) == 1


def test_role_change_is_audited_and_disabling_ends_sessions(world):
    user = _register(world)
    admin = world.client("admin")
    admin.patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
    person = world.client("anonymous")
    person.post("/api/v1/auth/sign-in", json={"email": user["email"], "password": PASSWORD})
    assert person.get("/api/v1/users/me").status_code == 200

    changed = admin.patch(f"/api/v1/users/{user['id']}", json={"role": "researcher"})
    assert changed.json()["role"] == "researcher"
    with world.session() as session:
        target = f"user:{user['id']}:{user['email']}"
        row = session.scalar(
            select(AuditLog).where(AuditLog.action == "user.role_change", AuditLog.target == target)
        )
        assert row.detail == {"from": "doctor", "to": "researcher"} and row.actor.endswith(
            "admin@example.org"
        )

    admin.patch(f"/api/v1/users/{user['id']}", json={"status": "disabled"})
    assert person.get("/api/v1/users/me").status_code == 401
    with world.session() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(UserSession).where(UserSession.user_id == user["id"])
            )
            == 0
        )


def test_the_last_admin_cannot_be_demoted(world):
    """Not by themselves (no admin demotes their own account: tests/api/test_administration.py), nor by the
    operator at the server."""
    admin_id = world.users["admin"].id
    response = world.client("admin").patch(f"/api/v1/users/{admin_id}", json={"role": "doctor"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "own_account"
    with world.session() as session, pytest.raises(Conflict) as refused:
        administer_user(session, None, admin_id, role="doctor")
    assert refused.value.code == "last_admin"
    assert world.client("admin").patch("/api/v1/users/999999", json={"role": "doctor"}).status_code == 404


def test_admin_manages_api_keys_over_http(world):
    admin = world.client("admin")
    body = {
        "name": "ris",
        "scopes": ["datasets"],
        "hospital": "St. Anna",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    created = admin.post("/api/v1/api-keys", json=body)
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["key"].startswith(f"msk_{key['prefix']}_")
    listed = admin.get("/api/v1/api-keys").json()["api_keys"]
    mine = next(k for k in listed if k["prefix"] == key["prefix"])
    assert "key" not in mine and key["key"].split("_", 2)[2] not in str(listed)

    system = world.client("anonymous", headers={"Authorization": f"Bearer {key['key']}"})
    assert system.get("/api/v1/datasets").status_code == 200
    assert _audit_count(world, "api_key.use", key["prefix"]) == 1
    assert admin.get("/api/v1/api-keys").json()["api_keys"][0]["last_used_at"]

    assert admin.delete(f"/api/v1/api-keys/{key['prefix']}").json()["revoked_at"]
    assert system.get("/api/v1/datasets").status_code == 401
    bad = admin.post("/api/v1/api-keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 400 and "valid scopes" in bad.json()["error"]["message"]


def test_cli_creates_the_first_admin_and_env_bootstrap_is_idempotent(tmp_path, monkeypatch, capsys):
    from common.cli import main
    from common.settings import Settings, get_settings
    from gateway.commands.users import bootstrap_admin
    from gateway.core.db import make_engine, session_scope

    monkeypatch.setenv("MEDSEG_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MEDSEG_DATABASE_URL", raising=False)
    monkeypatch.setenv("MEDSEG_USER_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        assert main(["user", "create", "--email", "Boss@Example.org", "--admin"]) == 0
        assert "created admin boss@example.org" in capsys.readouterr().out
        assert main(["user", "create", "--email", "boss@example.org", "--admin"]) == 2  # taken
        settings = Settings(state_dir=tmp_path, admin_email="second@example.org", admin_password=PASSWORD)
        bootstrap_admin(settings)  # an admin exists: nothing happens
        engine = make_engine(settings.sqlalchemy_url)
        with session_scope(engine) as session:
            assert [u.email for u in session.scalars(select(User))] == ["boss@example.org"]
        engine.dispose()

        fresh = Settings(
            state_dir=tmp_path / "fresh", admin_email="first@example.org", admin_password=PASSWORD
        )
        from gateway.core.db import run_migrations

        run_migrations(fresh.sqlalchemy_url)
        bootstrap_admin(fresh)
        bootstrap_admin(fresh)
        engine = make_engine(fresh.sqlalchemy_url)
        with session_scope(engine) as session:
            users = list(session.scalars(select(User)))
            assert [(u.email, u.role, u.status) for u in users] == [("first@example.org", "admin", "active")]
        engine.dispose()
    finally:
        get_settings.cache_clear()


def test_the_gateway_hashes_passwords_with_argon2id_at_rfc9106_low_memory():
    """The gateway's own hasher, in an interpreter the test plugin (tests/fixtures/passwords.py, a cheaper
    argon2id for the suite's thousands of accounts) has not touched: 3 passes over 64 MiB, 4 lanes (a hash at
    other parameters is replaced at sign-in: the next test)."""
    import subprocess
    import sys

    from argon2 import extract_parameters, profiles

    made = subprocess.run(
        [sys.executable, "-c", "from gateway.resources.accounts.service import hash_password; "
         f"print(hash_password({PASSWORD!r}))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    stored = made.stdout.strip()
    assert stored.startswith("$argon2id$")
    assert extract_parameters(stored) == profiles.RFC_9106_LOW_MEMORY


def test_a_password_hashed_at_another_cost_is_rehashed_at_the_next_sign_in(world):
    """A stored hash made with other parameters (here the production profile, as the suite's hasher is the
    cheaper one) still signs in, and is replaced by one at the hasher's current parameters."""
    from argon2 import PasswordHasher, extract_parameters, profiles

    from gateway.resources.accounts import service

    user = _register(world)
    assert world.client("admin").patch(f"/api/v1/users/{user['id']}", json={"status": "active"}).is_success
    with world.session() as session:
        row = session.get(User, user["id"])
        row.password_hash = PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY).hash(PASSWORD)
    with world.session() as session:
        assert extract_parameters(session.get(User, user["id"]).password_hash) == profiles.RFC_9106_LOW_MEMORY
    signed_in = world.client("anonymous").post(
        "/api/v1/auth/sign-in", json={"email": user["email"], "password": PASSWORD}
    )
    assert signed_in.status_code == 200, signed_in.text
    with world.session() as session:
        stored = session.get(User, user["id"]).password_hash
    assert extract_parameters(stored) == extract_parameters(service._hasher.hash("x"))
    assert extract_parameters(stored) != profiles.RFC_9106_LOW_MEMORY
