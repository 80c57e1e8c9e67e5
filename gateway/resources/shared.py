"""API shapes more than one resource uses: row ids as the API accepts them, optional short text, base64,
the error body, a model reference, how a failed validation is worded."""

from __future__ import annotations

import base64
from typing import Annotated

from annotated_types import Ge, Le
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

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
