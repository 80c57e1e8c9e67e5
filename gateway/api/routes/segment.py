from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from gateway.api.deps import DataPlaneDep, SegmentApiKey, SessionDep
from gateway.api.uploads import read_upload
from gateway.schemas import SegmentationPublic

router = APIRouter(tags=["segment"])


@router.post("/segment", response_model=SegmentationPublic)
def segment(
    dataplane: DataPlaneDep,
    session: SessionDep,
    api_key: SegmentApiKey,
    organ: Annotated[str, Form(max_length=200)],
    file: Annotated[UploadFile, File(description="PNG, JPEG, TIFF or DICOM")],
    patient_id: Annotated[str | None, Form(max_length=128)] = None,
) -> SegmentationPublic:
    """Segment one image: probability map and masks at 0.2 … 0.8, at the input's size."""
    upload = read_upload(file, dataplane.max_upload_bytes)
    result = dataplane.segment(
        session, organ, upload.data, upload.filename, patient_id or None, api_key_id=api_key.id
    )
    return SegmentationPublic.of(result)
