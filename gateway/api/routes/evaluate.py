from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from gateway.access import ACCESS
from gateway.api.deps import ClinicDep, DataPlaneDep, require
from gateway.api.uploads import read_upload
from gateway.principal import Principal
from gateway.resources.evaluations.schemas import EvaluationPublic

router = APIRouter(tags=["evaluate"])

EvaluateCaller = Annotated[Principal, Depends(require(ACCESS["evaluate"]))]


@router.post("/evaluate", response_model=EvaluationPublic)
def evaluate(
    dataplane: DataPlaneDep,
    _clinic: ClinicDep,  # serves the registry's default version
    _who: EvaluateCaller,
    organ: Annotated[str, Form(max_length=200)],
    images: Annotated[list[UploadFile], File(description="images to segment")],
    labels: Annotated[list[UploadFile], File(description="one label mask per image, matched by file name")],
) -> EvaluationPublic:
    """Per-image Dice and IoU, mean Dice, Dice per threshold."""
    limit = dataplane.max_upload_bytes
    result = dataplane.evaluate(
        organ, [read_upload(f, limit) for f in images], [read_upload(f, limit) for f in labels]
    )
    return EvaluationPublic.of(result)
