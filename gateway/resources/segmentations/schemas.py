"""HTTP shapes of segmenting an image and of the segmentation history (choices, masks, a patient's trend)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway.resources.shared import ModelPublic, b64
from gateway.resources.studies.schemas import StudyTrendPoint
from gateway.service import dataplane as dp


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


class SegmentRecordPublic(SegmentationPublic):
    """The contract's segment answer plus the clinical record's extras (additive)."""

    stability: float
    doubtful: bool
    suggested_threshold: float
    # only when asked (`include_image`): the image as the model saw it (DICOM windowed with the organ's
    # window), an 8-bit PNG the pages draw the masks on when the browser cannot show the upload itself
    image_png: str | None = None


class ChoiceRequest(BaseModel):
    threshold: float
    note: str | None = Field(default=None, max_length=2000)


class HistoryItem(BaseModel):
    id: str
    organ: str
    model_name: str
    model_version: str
    patient_id: str | None
    width: int
    height: int
    created_at: datetime
    stability: float | None
    doubtful: bool | None
    chosen_threshold: float | None
    chosen_note: str | None
    area: float
    area_unit: str
    area_threshold: float
    thumbnail_url: str | None
    image_url: str | None = None  # the image the viewer shows; None for results made before it was kept


class HistoryPublic(BaseModel):
    segmentations: list[HistoryItem]


class TrendPoint(BaseModel):
    segmentation_id: str
    at: datetime
    organ: str
    model_version: str
    area: float
    unit: str
    threshold: float
    chosen: bool


class NucleiPublic(BaseModel):
    """Nuclei in the mask at `threshold`, touching ones split (gateway/service/nuclei.py): how many, and each
    one's area in pixels, and in µm² when the image carried its pixel spacing."""

    segmentation_id: str
    threshold: float
    count: int
    areas_px: list[int]
    areas_um2: list[float] | None


class TrendPublic(BaseModel):
    """A patient over time, one unit per series: `studies` one point per study (organ volume in mL per label,
    by study date), `points` the 2-D images (area in mm² where the image carried its pixel spacing, else
    px)."""

    patient_id: str
    points: list[TrendPoint]
    studies: list[StudyTrendPoint] = []
