from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from gateway.access import ACCESS
from gateway.api.deps import ClinicDep, DataPlaneDep, SessionDep, require
from gateway.api.uploads import read_upload
from gateway.principal import Principal
from gateway.resources.segmentations.schemas import SegmentationPublic, SegmentRecordPublic
from gateway.service import history

router = APIRouter(tags=["segment"])

SegmentCaller = Annotated[Principal, Depends(require(ACCESS["segment"]))]


@router.post("/segment", response_model=SegmentRecordPublic)
def segment(
    dataplane: DataPlaneDep,
    clinic: ClinicDep,
    session: SessionDep,
    who: SegmentCaller,
    organ: Annotated[str, Form(max_length=200)],
    file: Annotated[UploadFile, File(description="PNG, JPEG, TIFF or DICOM")],
    patient_id: Annotated[str | None, Form(max_length=128)] = None,
) -> SegmentRecordPublic:
    """Segment one image: probability map and masks at 0.2 … 0.8, at the input's size; recorded in history."""
    upload = read_upload(file, dataplane.max_upload_bytes)
    record = history.segment(
        session,
        dataplane,
        who,
        organ,
        upload.data,
        upload.filename,
        patient_id or None,
        doubtful_below=clinic.settings.stability_doubtful_below,
    )
    return SegmentRecordPublic(
        **SegmentationPublic.of(record.result).model_dump(),
        stability=record.stability,
        doubtful=record.doubtful,
        suggested_threshold=record.suggested_threshold,
    )
