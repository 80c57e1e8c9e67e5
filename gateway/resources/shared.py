"""API shapes more than one resource uses: row ids as the API accepts them, optional short text, base64,
the error body, a model reference, list lengths and UUIDs as the API accepts them, how a failed validation
is worded."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated

from annotated_types import Ge, Le
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from common.errors import InvalidInput

# Row ids as the API accepts them (path, query or body): within the database's integer column, so a huge
# number is a 400 like any bad input, not an overflow inside the driver (PostgreSQL INTEGER / BIGINT).
RowId = Annotated[int, Ge(1), Le(2**31 - 1)]
BigRowId = Annotated[int, Ge(1), Le(2**63 - 1)]
optional_text = Field(default=None, max_length=200)  # names, titles, departments, hospitals


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ErrorBody(BaseModel):
    code: str
    message: str
    params: dict | None = None  # the values the message names (a file name, a limit), when it names any


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelPublic(BaseModel):
    name: str
    version: str


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """A request that fails its schema, worded for the caller (HTTP's 400, gRPC's INVALID_ARGUMENT)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header", "path")]
        field = ".".join(loc) or "request"
        parts.append(
            f"missing field {field!r}" if err.get("type") == "missing" else f"{field}: {err.get('msg')}"
        )
    return "; ".join(parts) or "invalid request"


# pydantic's error types → the rule a client words for the field (anything else: "invalid")
_RULES = {
    "missing": "missing",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "string_too_short": "too_short",
    "too_short": "too_short",
    "less_than": "too_large",
    "less_than_equal": "too_large",
    "greater_than": "too_small",
    "greater_than_equal": "too_small",
}
_LIMITS = ("max_length", "min_length", "le", "lt", "ge", "gt")


def validation_params(exc: RequestValidationError | ValidationError) -> dict:
    """The first failed field as `params` of the error (gateway/main.py): `field`, `rule` (missing, too_long,
    too_short, too_large, too_small or invalid) and the `limit` when the rule has one."""
    errors = exc.errors()
    if not errors:
        return {}
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header", "path")]
    params = {"field": ".".join(loc) or "request", "rule": _RULES.get(first.get("type", ""), "invalid")}
    context = first.get("ctx") or {}
    limit = next((context[k] for k in _LIMITS if k in context), None)
    if isinstance(limit, int | float):
        params["limit"] = limit
    return params


DEFAULT_LIST, MAX_LIST = 50, 200  # a list's length when not given, and at most


def list_limit(limit: int | None) -> int:
    """A list's length: `DEFAULT_LIST` when not given, else 1 … `MAX_LIST`."""
    if limit is None:
        return DEFAULT_LIST
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST}, not {limit}", code="invalid_input")
    return limit


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a UUID, not {value!r}", code="invalid_input") from None
