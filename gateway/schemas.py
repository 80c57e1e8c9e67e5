"""HTTP API shapes (never the ORM tables). Binary payloads are base64 strings, as in the contract."""

from __future__ import annotations

import base64
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import BaseModel

from gateway.service import dataplane as dp

# Row ids as the API accepts them (path, query or body): within the database's integer column, so a huge
# number is a 400 like any bad input, not an overflow inside the driver (PostgreSQL INTEGER / BIGINT).
RowId = Annotated[int, Ge(1), Le(2**31 - 1)]
BigRowId = Annotated[int, Ge(1), Le(2**63 - 1)]


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


class MaskPublic(BaseModel):
    threshold: float
    area_px: int
    mask_png: str


class SegmentationPublic(BaseModel):
    id: str
    organ: str
    model: ModelPublic
    width: int
    height: int
    default_threshold: float
    probability_png: str
    masks: list[MaskPublic]

    @classmethod
    def of(cls, r: dp.SegmentResult) -> SegmentationPublic:
        return cls(
            id=r.id,
            organ=r.organ,
            model=ModelPublic(name=r.model.name, version=r.model.version),
            width=r.width,
            height=r.height,
            default_threshold=r.default_threshold,
            probability_png=b64(r.probability_png),
            masks=[
                MaskPublic(threshold=m.threshold, area_px=m.area_px, mask_png=b64(m.mask_png))
                for m in r.masks
            ],
        )


class ImageScorePublic(BaseModel):
    filename: str
    dice: float
    iou: float
    width: int
    height: int
    predicted_px: int
    label_px: int


class ThresholdScorePublic(BaseModel):
    threshold: float
    mean_dice: float
    mean_iou: float


class EvaluationPublic(BaseModel):
    organ: str
    model: ModelPublic
    threshold: float
    images: list[ImageScorePublic]
    mean_dice: float
    mean_iou: float
    per_threshold: list[ThresholdScorePublic]

    @classmethod
    def of(cls, r: dp.EvaluateResult) -> EvaluationPublic:
        return cls(
            organ=r.organ,
            model=ModelPublic(name=r.model.name, version=r.model.version),
            threshold=r.threshold,
            images=[ImageScorePublic(**vars(s)) for s in r.images],
            mean_dice=r.mean_dice,
            mean_iou=r.mean_iou,
            per_threshold=[ThresholdScorePublic(**vars(t)) for t in r.per_threshold],
        )


class Health(BaseModel):
    status: str
    components: dict[str, str] = {}
