"""API shapes more than one resource uses: row ids as the API accepts them, optional short text, base64,
the error body, a model reference."""

from __future__ import annotations

import base64
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel, Field

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
