"""Issue 15: admins administer their hospital, a platform admin everything; issue 18 item 8: no admin disables
their own account.

A hospital's admin ("admin_a", St. Anna; or St. Anna's admin-scoped key) lists, approves and disables the
people of St. Anna only, makes and revokes St. Anna's keys only and reads St. Anna's audit entries only;
those of Bellevue answer 404 (as elsewhere) or are left out of lists. The platform admin ("admin", no
hospital) reaches all of them. The matrix (tests/api/test_tenancy_matrix.py) walks the same rules cell by
cell; these tests follow the admin's tasks end to end.
"""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from sqlalchemy import select

from common.errors import Conflict
from gateway.models import AuditLog, User
from gateway.resources.accounts import service as accounts
from gateway.security import create_api_key
from tests.api.conftest import HOSPITAL_A, HOSPITAL_B, PASSWORD


@pytest.fixture(scope="module")
def admins(world):
    """St. Anna's admin (a person) and St. Anna's admin-scoped key, beside the world's platform admin."""
    with world.session() as session:
        world.users["admin_a"] = accounts.create_user(
            session, email="admin-a@example.org", password=PASSWORD, full_name="Admin A", role="admin",
            status="active", hospital=HOSPITAL_A, actor="test",
        )  # fmt: skip
        row, raw = create_api_key(session, "st-anna-admin", ["admin"], hospital=HOSPITAL_A)
        world.keys["admin_a"], world.key_rows["admin_a"] = raw, row
    return world


def _registered(world, hospital: str | None) -> dict:
    """A pending doctor who registered naming `hospital`, as the platform admin sees them."""
    email = f"p-{uuid.uuid4().hex[:8]}@example.org"
    body = {"email": email, "password": PASSWORD, "full_name": "New Doctor", "role": "doctor"}
    answer = world.client("anonymous").post("/api/v1/auth/register", json={**body, "hospital": hospital})
    assert answer.status_code == 202, answer.text
    users = world.client("admin").get("/api/v1/users", params={"status": "pending"}).json()["users"]
    return next(u for u in users if u["email"] == email)


def _emails(client, **params) -> set[str]:
    answer = client.get("/api/v1/users", params=params)
    assert answer.status_code == 200, answer.text
    return {u["email"] for u in answer.json()["users"]}


def test_a_hospital_admin_lists_and_approves_only_their_hospital_s_people(admins):
    world = admins
    ours, theirs, nobodys = (_registered(world, h) for h in (HOSPITAL_A, HOSPITAL_B, None))
    for admin_a in (world.client("admin_a"), world.client("key:admin_a")):
        pending = _emails(admin_a, status="pending")
        assert ours["email"] in pending and not {theirs["email"], nobodys["email"]} & pending
        everyone = _emails(admin_a)
        assert {"doctor@example.org", "admin-a@example.org"} <= everyone
        assert not {"doctor_b@example.org", "admin@example.org", "researcher@example.org"} & everyone
        for user in (theirs, nobodys):
            refused = admin_a.patch(f"/api/v1/users/{user['id']}", json={"status": "active"})
            assert refused.status_code == 404, refused.text
    approved = world.client("admin_a").patch(f"/api/v1/users/{ours['id']}", json={"status": "active"})
    assert approved.status_code == 200 and approved.json()["status"] == "active", approved.text
    # the platform admin reaches every account, of any hospital or none
    platform = world.client("admin")
    assert {theirs["email"], nobodys["email"]} <= _emails(platform, status="pending")
    answer = platform.patch(f"/api/v1/users/{theirs['id']}", json={"status": "active"})
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("who", ["admin_a", "admin"])
@pytest.mark.parametrize("change", [{"status": "disabled"}, {"role": "doctor"}])
def test_no_admin_disables_or_demotes_their_own_account(admins, who, change):
    world = admins
    me = world.users[who].id
    refused = world.client(who).patch(f"/api/v1/users/{me}", json=change)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "own_account", refused.text
    with world.session() as session:
        assert (session.get(User, me).status, session.get(User, me).role) == ("active", "admin")
    # harmless changes to one's own account still go through
    assert world.client(who).patch(f"/api/v1/users/{me}", json={"status": "active"}).status_code == 200


def test_another_admin_may_disable_an_admin_and_the_operator_keeps_the_last_admin(admins):
    world = admins
    platform, admin_a = world.client("admin"), world.users["admin_a"].id
    assert platform.patch(f"/api/v1/users/{admin_a}", json={"status": "disabled"}).status_code == 200
    assert platform.patch(f"/api/v1/users/{admin_a}", json={"status": "active"}).status_code == 200
    # the last active admin, demoted by the operator at the server (the API's admins cannot: own_account)
    with world.session() as session:
        session.get(User, admin_a).status = "disabled"
        session.commit()
        try:
            with pytest.raises(Conflict, match="last active admin"):
                accounts.administer_user(session, None, world.users["admin"].id, role="doctor")
        finally:
            session.rollback()
            session.get(User, admin_a).status = "active"
            session.commit()


def test_only_a_platform_admin_moves_people_between_hospitals(admins):
    world = admins
    user = _registered(world, HOSPITAL_A)
    admin_a = world.client("admin_a")
    for hospital in (HOSPITAL_B, ""):  # "": out of every hospital
        refused = admin_a.patch(f"/api/v1/users/{user['id']}", json={"hospital": hospital})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "other_hospital", (
            refused.text
        )
    moved = world.client("admin").patch(f"/api/v1/users/{user['id']}", json={"hospital": HOSPITAL_B})
    assert moved.status_code == 200 and moved.json()["hospital"] == HOSPITAL_B, moved.text
    target = f"user:{user['id']}:{user['email']}"
    with world.session() as session:
        entries = session.scalars(
            select(AuditLog).where(AuditLog.action == "user.hospital_change", AuditLog.target == target)
        ).all()
    assert sorted(e.hospital for e in entries) == sorted([HOSPITAL_A, HOSPITAL_B])  # both hospitals see it
    assert admin_a.patch(f"/api/v1/users/{user['id']}", json={"status": "active"}).status_code == 404


def _prefixes(client) -> set[str]:
    answer = client.get("/api/v1/api-keys")
    assert answer.status_code == 200, answer.text
    return {k["prefix"] for k in answer.json()["api_keys"]}


def test_a_hospital_admin_makes_and_revokes_only_their_hospital_s_keys(admins):
    world = admins
    with world.session() as session:
        theirs = create_api_key(session, "bellevue-ris", ["segment"], hospital=HOSPITAL_B)[0].prefix
    for admin_a in (world.client("admin_a"), world.client("key:admin_a")):
        made = admin_a.post("/api/v1/api-keys", json={"name": "ris", "scopes": ["segment"]})
        assert made.status_code == 201 and made.json()["hospital"] == HOSPITAL_A, made.text
        for hospital in (HOSPITAL_B, "Elsewhere"):
            refused = admin_a.post(
                "/api/v1/api-keys", json={"name": "x", "scopes": ["segment"], "hospital": hospital}
            )
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "other_hospital", (
                refused.text
            )
        listed = _prefixes(admin_a)
        assert made.json()["prefix"] in listed and theirs not in listed
        assert world.key_rows["segment"].prefix not in listed  # the platform's keys (no hospital) too
        assert admin_a.delete(f"/api/v1/api-keys/{theirs}").status_code == 404
        assert admin_a.delete(f"/api/v1/api-keys/{made.json()['key']}").json()["revoked_at"]
    platform = world.client("admin")
    assert theirs in _prefixes(platform)
    assert platform.delete(f"/api/v1/api-keys/{theirs}").json()["revoked_at"]
    made = platform.post(
        "/api/v1/api-keys", json={"name": "bellevue", "scopes": ["segment"], "hospital": HOSPITAL_B}
    )
    assert made.status_code == 201 and made.json()["hospital"] == HOSPITAL_B, made.text


def test_audit_entries_belong_to_the_hospital_they_are_about(admins):
    world = admins
    anonymous = world.client("anonymous")
    for who in ("doctor", "doctor_b"):
        answer = anonymous.post(
            "/api/v1/auth/sign-in", json={"email": f"{who}@example.org", "password": PASSWORD}
        )
        assert answer.status_code == 200, answer.text
    wrong = anonymous.post(
        "/api/v1/auth/sign-in", json={"email": "doctor@example.org", "password": "not it at all"}
    )
    assert wrong.status_code == 401
    with world.session() as session:  # the platform's own entry: no hospital
        session.add(AuditLog(actor="cli", action="sign_in", target="operator"))
        session.commit()

    def targets(client, action: str) -> set[str]:
        page = client.get("/api/v1/audit", params={"action": action, "limit": 1000})
        assert page.status_code == 200, page.text
        export = client.get("/api/v1/audit/export.csv", params={"action": action})
        assert export.status_code == 200, export.text
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert {r["target"] for r in rows} == {e["target"] for e in page.json()["entries"]}
        return {e["target"] for e in page.json()["entries"]}

    for admin_a in (world.client("admin_a"), world.client("key:admin_a")):
        assert targets(admin_a, "sign_in") == {"doctor@example.org"}
        assert targets(admin_a, "sign_in.failed") == {
            "doctor@example.org"
        }  # tries on their people's accounts
    assert {"doctor@example.org", "doctor_b@example.org", "operator"} <= targets(
        world.client("admin"), "sign_in"
    )
