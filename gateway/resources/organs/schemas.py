"""HTTP shapes of the organs and their current models."""

from __future__ import annotations

from pydantic import BaseModel

from gateway.resources.shared import ModelPublic
from gateway.service import dataplane as dp


class OrganPublic(BaseModel):
    name: str
    display_name: str
    modality: str
    label: str
    model: ModelPublic
    default_threshold: float
    ready: bool

    @classmethod
    def of(cls, s: dp.OrganStatus) -> OrganPublic:
        return cls(
            name=s.name,
            display_name=s.display_name,
            modality=s.modality,
            label=s.label,
            model=ModelPublic(name=s.model.name, version=s.model.version),
            default_threshold=s.default_threshold,
            ready=s.ready,
        )


class OrgansPublic(BaseModel):
    organs: list[OrganPublic]
