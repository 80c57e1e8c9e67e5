"""Every route × every kind of caller: the allowed ones work, the others get 401/403, none gets a 5xx.

Routes are enumerated from the app's OpenAPI schema, so a new route fails `test_every_route_is_covered`
until it gets a row in ACCESS below (who may call it, and how to call it properly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from gateway.models import Dataset
from tests.api.clinic_access import CLINIC_ACCESS
from tests.api.conftest import HOSPITAL_A, png, small_dataset_zip

CALLERS = ("anonymous", "doctor", "researcher", "admin", "key_with_scope", "key_without_scope")
PEOPLE = {"doctor", "researcher", "admin"}


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]  # people who may call it
    scopes: tuple[str, ...]  # API key scopes that grant it (empty: API keys may not)
    call: Callable  # (world, client, who) -> response
    public: bool = False  # anyone, no credentials needed


def _image(client, path, field="file", **data):
    return client.post(
        path, data={"organ": "liver", **data}, files={field: ("a.png", png(np.zeros((32, 32), np.uint8)))}
    )


def _evaluate(world, client, who):
    image = png(np.zeros((32, 32), np.uint8))
    label = png(np.pad(np.full((8, 8), 255, np.uint8), 12))
    return client.post(
        "/api/v1/evaluate",
        data={"organ": "liver"},
        files=[("images", ("a.png", image)), ("labels", ("a.png", label))],
    )


def _own_dataset(world, who) -> str:
    """A dataset row owned by `who` (so its uploader may delete it)."""
    import uuid

    with world.session() as session:
        row = Dataset(
            id=f"liver-{uuid.uuid4().hex[:12]}", organ="liver", name="t", pair_count=1, size_bytes=1,
            dataset_hash="0" * 64, manifest_key="k", hospital=HOSPITAL_A,
            uploaded_by_user_id=world.users[who].id if who in world.users else None,
            uploaded_by_api_key_id=world.key_rows["datasets"].id if who == "key_with_scope" else None,
        )  # fmt: skip
        session.add(row)
        return row.id


def _upload(world, client, who):
    return client.post(
        "/api/v1/datasets", data={"organ": "liver"}, files={"file": ("set.zip", small_dataset_zip(1))}
    )


def _pending_id(world) -> int:
    return world.users["pending"].id


def _throwaway_key(world) -> str:
    from gateway.security import create_api_key

    with world.session() as session:
        return create_api_key(session, "throwaway", ["segment"])[0].prefix


_any_dataset = {}


def _visible_dataset(world) -> str:
    if "id" not in _any_dataset or _any_dataset.get("world") is not world:
        _any_dataset.update(id=_own_dataset(world, "doctor"), world=world)
    return _any_dataset["id"]


ADMIN = frozenset({"admin"})
RESEARCH = frozenset({"researcher", "admin"})
MODEL_READERS = ("models", "segment", "evaluate")
ALL_PEOPLE = frozenset(PEOPLE)
ACCESS: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule(frozenset(), (), lambda w, c, who: c.get("/healthz"), public=True),
    ("GET", "/readyz"): Rule(frozenset(), (), lambda w, c, who: c.get("/readyz"), public=True),
    ("GET", "/api/v1/organs"): Rule(
        ALL_PEOPLE, ("models", "segment", "evaluate"), lambda w, c, who: c.get("/api/v1/organs")
    ),
    ("POST", "/api/v1/segment"): Rule(
        ALL_PEOPLE, ("segment",), lambda w, c, who: _image(c, "/api/v1/segment")
    ),
    ("POST", "/api/v1/evaluate"): Rule(ALL_PEOPLE, ("evaluate",), _evaluate),
    ("POST", "/api/v1/auth/register"): Rule(
        frozenset(),
        (),
        lambda w, c, who: c.post(
            "/api/v1/auth/register",
            json={
                "email": f"new-{who}-{np.random.randint(1 << 30)}@example.org",
                "password": "a long password",
                "full_name": "New Person",
                "role": "doctor",
            },
        ),  # fmt: skip
        public=True,
    ),
    ("POST", "/api/v1/auth/sign-in"): Rule(
        frozenset(),
        (),
        lambda w, c, who: c.post(
            "/api/v1/auth/sign-in",
            json={"email": "researcher@example.org", "password": "correct horse battery"},
        ),
        public=True,
    ),
    ("POST", "/api/v1/auth/sign-out"): Rule(
        ALL_PEOPLE, (), lambda w, c, who: c.post("/api/v1/auth/sign-out")
    ),
    ("GET", "/api/v1/users/me"): Rule(ALL_PEOPLE, (), lambda w, c, who: c.get("/api/v1/users/me")),
    ("PATCH", "/api/v1/users/me"): Rule(
        ALL_PEOPLE, (), lambda w, c, who: c.patch("/api/v1/users/me", json={"title": "Dr."})
    ),
    ("POST", "/api/v1/users/me/password"): Rule(
        ALL_PEOPLE,
        (),
        lambda w, c, who: c.post(
            "/api/v1/users/me/password",
            json={"current_password": "correct horse battery", "new_password": "correct horse battery"},
        ),
    ),
    ("GET", "/api/v1/users"): Rule(ADMIN, ("admin",), lambda w, c, who: c.get("/api/v1/users")),
    ("PATCH", "/api/v1/users/{user_id}"): Rule(
        ADMIN,
        ("admin",),
        lambda w, c, who: c.patch(f"/api/v1/users/{_pending_id(w)}", json={"role": "doctor"}),
    ),
    ("GET", "/api/v1/api-keys"): Rule(ADMIN, ("admin",), lambda w, c, who: c.get("/api/v1/api-keys")),
    ("POST", "/api/v1/api-keys"): Rule(
        ADMIN,
        ("admin",),
        lambda w, c, who: c.post("/api/v1/api-keys", json={"name": "pacs", "scopes": ["segment"]}),
    ),
    ("DELETE", "/api/v1/api-keys/{prefix}"): Rule(
        ADMIN, ("admin",), lambda w, c, who: c.delete(f"/api/v1/api-keys/{_throwaway_key(w)}")
    ),
    ("POST", "/api/v1/datasets"): Rule(frozenset({"doctor"}), ("datasets",), _upload),
    ("GET", "/api/v1/datasets"): Rule(ALL_PEOPLE, ("datasets",), lambda w, c, who: c.get("/api/v1/datasets")),
    ("GET", "/api/v1/datasets/{dataset_id}"): Rule(
        ALL_PEOPLE, ("datasets",), lambda w, c, who: c.get(f"/api/v1/datasets/{_visible_dataset(w)}")
    ),
    ("DELETE", "/api/v1/datasets/{dataset_id}"): Rule(
        frozenset({"doctor", "admin"}),
        ("datasets",),
        lambda w, c, who: c.delete(f"/api/v1/datasets/{_own_dataset(w, who)}"),
    ),
    ("GET", "/api/v1/audit"): Rule(ADMIN, ("admin",), lambda w, c, who: c.get("/api/v1/audit")),
    ("GET", "/api/v1/audit/export.csv"): Rule(
        ADMIN, ("admin",), lambda w, c, who: c.get("/api/v1/audit/export.csv")
    ),
}


ACCESS.update({route: Rule(*fields) for route, fields in CLINIC_ACCESS.items()})


def _app_routes(world) -> set[tuple[str, str]]:
    schema = world.app().openapi()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def test_every_route_is_covered(world):
    assert _app_routes(world) == set(ACCESS), "add the new route to ACCESS: who may call it, and how"


def _other_scope(scopes: tuple[str, ...]) -> str:
    # a key that does not grant the route (admin grants everything, so never pick it as "without")
    return next(s for s in ("evaluate", "segment", "datasets") if s not in scopes)


def _expected_allowed(rule: Rule, caller: str) -> bool:
    if rule.public:
        return True
    if caller in PEOPLE:
        return caller in rule.roles
    if caller == "key_with_scope":
        return bool(rule.scopes)
    return False


@pytest.mark.parametrize("route", sorted(ACCESS), ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("caller", CALLERS)
def test_route_access(world, route, caller):
    rule = ACCESS[route]
    if caller == "key_with_scope":
        who = f"key:{rule.scopes[0] if rule.scopes else 'segment'}"
    elif caller == "key_without_scope":
        who = f"key:{_other_scope(rule.scopes)}"
    else:
        who = caller
    response = rule.call(world, world.client(who), caller)
    assert response.status_code < 500, response.text
    if _expected_allowed(rule, caller):
        assert response.status_code < 400, (
            f"{caller} should be allowed: {response.status_code} {response.text}"
        )
    elif caller == "anonymous":
        assert response.status_code == 401, response.text
    else:
        assert response.status_code in (401, 403), response.text
        # feedback_doctors_only: a researcher passes the access table but replies rather than starts a thread
        refusals = ("forbidden", "missing_credentials", "unauthenticated", "feedback_doctors_only")
        assert response.json()["error"]["code"] in refusals, response.text


@pytest.mark.parametrize("route", [r for r in sorted(ACCESS) if r[0] != "GET" and ACCESS[r].roles])
def test_cookie_requests_without_csrf_token_are_refused(world, route):
    rule = ACCESS[route]
    who = sorted(rule.roles)[0]
    response = rule.call(world, world.client(who, csrf=False), who)
    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed", response.text
