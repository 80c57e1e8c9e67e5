"""schemathesis against the gateway's own OpenAPI document, in process (ASGI), on the test world's app
(SQLite, fake organ servers, in-memory object store): every operation gets valid and invalid generated
requests from a signed-in person, so they reach the handlers. No answer may be a 5xx, and every 4xx must
carry the {"error": {"code", "message"}} shape.

Generation is derandomized (a fixed seed per test), so CI sees the same cases every run.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway.models import User
from gateway.resources.accounts import service as accounts
from tests.api.conftest import PEOPLE

CASES_PER_OPERATION = int(os.environ.get("MEDSEG_SCHEMATHESIS_CASES", "12"))
MIN_TOTAL_CASES = 500
# Routes only a doctor may call; everything else is called as the admin, who may call the rest.
DOCTOR_ONLY = {("POST", "/api/v1/datasets"), ("POST", "/api/v1/segmentations/{segmentation_id}/choice")}
CREDENTIAL_HEADERS = {"authorization", "x-csrf-token", "cookie"}


def error_shape_problem(response) -> str | None:
    """None when a 4xx/5xx body is {"error": {"code": str, "message": str}}, else what is wrong."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not all(isinstance(error.get(k), str) for k in ("code", "message")):
        return f"not the error shape: {body!r}"[:300]
    return None


def _fresh_session(world, who: str) -> tuple[str, str]:
    """A new session (raw cookie, CSRF token) for `who`, restored to its fixture role and status first:
    generated calls may sign out, change the password or even disable the account they run as."""
    role, hospital, status = PEOPLE[who]
    with world.session() as session:
        user = session.get(User, world.users[who].id)
        user.role, user.hospital, user.status = role, hospital, status
        user_session, raw = accounts.start_session(session, user, ttl=timedelta(hours=1))
        return raw, user_session.csrf_token


@pytest.fixture(scope="module")
def api_schema(world):
    return schemathesis.openapi.from_asgi("/openapi.json", world.app())


def _fuzz(world, operation, counts: Counter) -> None:
    """Up to CASES_PER_OPERATION generated requests (valid and invalid) to one operation; AssertionError
    on the first 5xx or badly shaped 4xx (shrunk to the simplest such request)."""
    label = f"{operation.method.upper()} {operation.path}"
    who = "doctor" if (operation.method.upper(), operation.path) in DOCTOR_ONLY else "admin"
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=CASES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case):
        counts[label] += 1
        raw, csrf = _fresh_session(world, who)
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS}
        case.cookies = {}
        response = case.call(
            headers={"X-CSRF-Token": csrf}, cookies={world.settings.session_cookie_name: raw}
        )
        assert response.status_code < 500, (
            f"{label} → {response.status_code}: {response.text[:300]}\n{case.as_curl_command()}"
        )
        if response.status_code >= 400:
            problem = error_shape_problem(response)
            assert problem is None, f"{label} → {response.status_code}: {problem}\n{case.as_curl_command()}"

    check()


def test_generated_requests_get_no_5xx_and_4xx_have_the_error_shape(world, api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40, "the OpenAPI document lost its operations"
    counts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for operation in operations:
        try:
            _fuzz(world, operation, counts)
        except Exception as exc:  # the test client re-raises the app's unhandled errors: a 500 too
            failures[f"{operation.method.upper()} {operation.path}"] = f"{type(exc).__name__}: {exc}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert sum(counts.values()) >= MIN_TOTAL_CASES, counts
    assert set(counts) == {f"{op.method.upper()} {op.path}" for op in operations}
