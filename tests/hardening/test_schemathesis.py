"""schemathesis against the gateway's own OpenAPI document, in process (ASGI), on the test world's app
(SQLite, fake organ servers, in-memory object store): every operation gets valid and invalid generated
requests from a signed-in person, and again with an API key holding every scope, so they reach the
handlers. No answer may be a 5xx, every 4xx must carry the {"error": {"code", "message"}} shape, and every
status and content type must be one the document lists for the operation (schemathesis'
status_code_conformance and content_type_conformance: gateway/api/openapi.py adds the error statuses).
Half the requests to a route on one study name a real one the caller reaches (done or queued, NIfTI or
DICOM), and half the generated study uploads carry a real NIfTI, so the binary answers (mask.nii.gz, seg.dcm,
image.nii.gz), the conflicts and the 202 are generated too, not only 404s.

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
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from gateway.models import User
from gateway.resources.accounts import service as accounts
from gateway.security import create_api_key
from tests.api.clinic_access import make_study, study_files
from tests.api.conftest import KEY_SCOPES, PEOPLE

CASES_PER_OPERATION = int(os.environ.get("MEDSEG_SCHEMATHESIS_CASES", "12"))
MIN_TOTAL_CASES = 500
# Routes only a doctor may call; everything else is called as the admin, who may call the rest.
DOCTOR_ONLY = {
    ("POST", "/api/v1/datasets"),
    ("POST", "/api/v1/segmentations/{segmentation_id}/choice"),
    ("POST", "/api/v1/studies/{study_id}/choice"),
}
REAL_STUDY = st.sampled_from([None, ("done", "nifti"), ("done", "dicom"), ("queued", "nifti")])
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


@pytest.fixture(scope="module")
def all_scopes_key(world) -> tuple[int, str]:
    """(id, raw key) of a key with every scope (admin among them: a platform admin's reach)."""
    with world.session() as session:
        row, raw = create_api_key(session, "schemathesis", list(KEY_SCOPES))
        return row.id, raw


def _with_real_study(world, case, study, who: str, api_key_id: int | None) -> None:
    """A study route's case on a real study the caller made; a study upload with a real NIfTI."""
    if study is None:
        return
    if "{study_id}" in case.operation.path:
        owner = {"api_key_id": api_key_id} if api_key_id else {"user_id": world.users[who].id}
        status, source = study
        study_id = make_study(world, status=status, source=source, **owner)
        case.path_parameters = {**(case.path_parameters or {}), "study_id": study_id}
    elif (
        (case.operation.method.upper(), case.operation.path) == ("POST", "/api/v1/studies")
        and isinstance(case.body, dict)
        and (case.media_type or "").startswith("multipart/")  # not the JSON body naming a PACS series
    ):
        body = {k: v for k, v in case.body.items() if k != "study_date"}
        case.body = {**body, "organ": "liver", "files": [study_files("nifti")[0][1]]}


def _fuzz(world, operation, counts: Counter, api_key: tuple[int, str] | None = None) -> None:
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
    @given(case=cases, study=REAL_STUDY)
    def check(case, study):
        counts[label] += 1
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS}
        case.cookies = {}
        _with_real_study(world, case, study, who, api_key[0] if api_key else None)
        if api_key:
            response = case.call(headers={"Authorization": f"Bearer {api_key[1]}"})
        else:
            raw, csrf = _fresh_session(world, who)
            response = case.call(
                headers={"X-CSRF-Token": csrf}, cookies={world.settings.session_cookie_name: raw}
            )
        assert response.status_code < 500, (
            f"{label} → {response.status_code}: {response.text[:300]}\n{case.as_curl_command()}"
        )
        if response.status_code >= 400:
            problem = error_shape_problem(response)
            assert problem is None, f"{label} → {response.status_code}: {problem}\n{case.as_curl_command()}"
        try:  # a status and a content type the document lists for the operation
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance])
        except (Exception, BaseExceptionGroup) as exc:
            raise AssertionError(f"{label} → {response.status_code}: not in the document\n{exc}") from None

    check()


@pytest.mark.parametrize("credentials", ["session", "api key"])
def test_generated_requests_get_no_5xx_and_4xx_have_the_error_shape(
    world, api_schema, all_scopes_key, credentials
):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40, "the OpenAPI document lost its operations"
    counts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for operation in operations:
        try:
            _fuzz(world, operation, counts, all_scopes_key if credentials == "api key" else None)
        except Exception as exc:  # the test client re-raises the app's unhandled errors: a 500 too
            failures[f"{operation.method.upper()} {operation.path}"] = f"{type(exc).__name__}: {exc}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert sum(counts.values()) >= MIN_TOTAL_CASES, counts
    assert set(counts) == {f"{op.method.upper()} {op.path}" for op in operations}
