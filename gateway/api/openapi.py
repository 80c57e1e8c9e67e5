"""The OpenAPI document says what the API really answers, in one place (`install(app)`):

* every /api/ operation lists the error statuses it can give, each with the `{"error": {"code",
  "message"}}` body: 400 (bad input: FastAPI's own 422 is answered as 400 by gateway/main.py, so the
  generated 422 entries are replaced; the one real 422, an unsupported language on PATCH /users/me,
  stays), 401/403 (who calls; not on the public operations), 404 (an id or organ that does not exist),
  409 (conflicts, per operation below), 413 (a body over the limit), 415 (an upload that is not
  multipart), 429 (sign-in throttling) and 503 (a
  dependency is down);
* the organ-name and patient-ID rules (gateway/service/organs.py ORGAN_NAME, gateway/service/dataplane.py
  PATIENT_ID) appear as `pattern` on every parameter and form/body property named `organ` / `patient_id`.
"""

from __future__ import annotations

import copy

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.service.dataplane import PATIENT_ID
from gateway.service.organs import ORGAN_NAME

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "params": {"type": "object", "description": "the values the message names, by name"},
            },
        }
    },
}
DESCRIPTIONS = {
    400: "invalid input (the message names the field)",
    401: "no credentials, or an unknown, expired or revoked session or API key",
    403: "the caller may not do this (role, key scope, CSRF token, hospital), or the account is not active",
    404: "no such resource (or organ)",
    409: "conflicts with the current state",
    413: "the request body or a file is over the limit",
    415: "the body is not multipart/form-data",
    422: "well-formed but not supported (e.g. a language the pages are not translated into)",
    429: "too many failed sign-ins from this address; see Retry-After",
    503: "a dependency (database, object store, organ server) is unavailable; the message names it",
}
PUBLIC = {("post", "/api/v1/auth/register"), ("post", "/api/v1/auth/sign-in")}
# Operations that can answer 409 (common.errors.Conflict raised on their path).
CONFLICTS = {
    ("patch", "/api/v1/users/{user_id}"),  # the last admin; disabling or demoting oneself
    ("post", "/api/v1/models/{organ}/versions"),
    ("post", "/api/v1/models/{organ}/versions/{version}/promote"),
    ("post", "/api/v1/models/{organ}/rollback"),
    ("put", "/api/v1/models/{organ}/reference-set"),
    ("post", "/api/v1/evaluations"),
    ("post", "/api/v1/training/jobs"),
    ("post", "/api/v1/training/jobs/{job_id}/cancel"),
    ("post", "/api/v1/studies"),  # several series in one upload
    ("get", "/api/v1/studies/{study_id}/mask.nii.gz"),  # the study is not done
    ("get", "/api/v1/studies/{study_id}/seg.dcm"),  # not done; a NIfTI study has no DICOM series
    ("post", "/api/v1/studies/{study_id}/cancel"),  # already finished
    ("post", "/api/v1/studies/{study_id}/choice"),  # not done
}
EXTRA = {
    ("post", "/api/v1/auth/sign-in"): {401, 403, 429},  # wrong password; account not active; throttled
    ("patch", "/api/v1/users/me"): {422},
}
PATTERNS = {
    "organ": "^" + ORGAN_NAME.pattern.strip("^$") + "$",
    "patient_id": "^" + PATIENT_ID.pattern + "$",
}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            app.openapi_schema = complete(schema)
        return app.openapi_schema

    app.openapi = openapi


def complete(schema: dict) -> dict:
    schema = copy.deepcopy(schema)
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, methods in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for method, operation in methods.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation 422 is answered as 400 (gateway/main.py)
            codes = {400, 503}
            if operation.get("requestBody"):
                codes.add(413)
                if "multipart/form-data" in operation["requestBody"].get("content", {}):
                    codes.add(415)
            if (method, path) not in PUBLIC:
                codes |= {401, 403, 404}
            if (method, path) in CONFLICTS:
                codes.add(409)
            codes |= EXTRA.get((method, path), set())
            for code in sorted(codes):
                responses.setdefault(
                    str(code),
                    {
                        "description": DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
            for parameter in operation.get("parameters", []):
                _add_pattern(parameter.get("name"), parameter.get("schema"))
            for content in (operation.get("requestBody") or {}).get("content", {}).values():
                _patterns_in(content.get("schema"), schema)
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    return schema


def _patterns_in(body: dict | None, schema: dict) -> None:
    if not body:
        return
    if "$ref" in body:
        body = schema["components"]["schemas"].get(body["$ref"].rsplit("/", 1)[-1], {})
    for name, prop in (body.get("properties") or {}).items():
        _add_pattern(name, prop)


def _add_pattern(name: str | None, prop: dict | None) -> None:
    if name not in PATTERNS or not prop:
        return
    for option in [prop, *prop.get("anyOf", [])]:
        if option.get("type") == "string" and "pattern" not in option:
            option["pattern"] = PATTERNS[name]
