"""HTTP shapes of the organs and their current models."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.resources.shared import ModelPublic
from gateway.service import dataplane as dp


class OrganPublic(BaseModel):
    name: str
    display_name: str
    modality: str
    label: str
    labels: list[str] = Field(description="what mask values 1..N name (0 is background)")
    dimensions: int = Field(description="2: segments images (a study slice by slice); 3: whole volumes only")
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
            labels=list(s.labels),
            dimensions=s.dimensions,
            model=ModelPublic(name=s.model.name, version=s.model.version),
            default_threshold=s.default_threshold,
            ready=s.ready,
        )


class OrgansPublic(BaseModel):
    organs: list[OrganPublic]
