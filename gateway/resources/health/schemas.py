"""HTTP shapes of the probes."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    components: dict[str, str] = {}
