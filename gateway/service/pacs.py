"""The hospital's PACS in the gateway: search it and list a study's series (QIDO-RS) for pickers, segment a
series by its UIDs (fetched with WADO-RS, then the same study job as an upload), store the DICOM SEG back into
the same study (STOW-RS) when the job is done and again for every threshold saved later.

Patient identity. MedSeg keeps pseudonymous patient IDs only (gateway/service/dataplane.py, PATIENT_ID). A
study fetched from the PACS takes the `patient_id` the caller gives, else the series' PatientID mapped:
  - the PatientID itself when it already is such an ID (1-64 ASCII letters and digits with . _ : - inside,
    e.g. "P-0042"): the same ID an upload of that series gets, so a patient has one trend whichever way
    their series came in;
  - else "PACS-" and the first 20 hex digits of HMAC-SHA256(key, PatientID) (an ID with spaces, a caret or
    other scripts, which may be a name typed into the ID field): the same patient gets the same ID as long
    as the key stays, and the ID cannot be turned back into the PatientID without the key. The key is
    MEDSEG_PACS_PATIENT_KEY (a Secret; required in production, where replicas must agree), else one
    generated once into `<state>/pacs-patient-key`.
Patient names are never read: not stored in the database, not logged; PACS PatientIDs are not logged either,
and the pickers answer the mapped ID, never the PACS's own.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from sqlalchemy.orm import Session

from common.errors import Conflict, Forbidden, InvalidInput, ServiceUnavailable
from common.pacs import Pacs, PacsSeries, PacsStudy, SeriesInfo
from common.settings import Settings
from gateway.access import ACCESS
from gateway.models import Study
from gateway.principal import Principal
from gateway.service.dataplane import PATIENT_ID, check_patient_id
from gateway.service.studies import PacsSource, StudyJobs, Upload
from services import imaging

logger = logging.getLogger(__name__)

PATIENT_KEY_FILE = "pacs-patient-key"
HASHED_PREFIX = "PACS-"
HASH_HEX_DIGITS = 20  # 80 bits: no two patients of one archive collide in practice
SEGMENTABLE = ("CT", "MR")  # the modalities a volume study takes (issue 21: anything else is a 4xx)


# --- patient identity ---------------------------------------------------------------------------------
def patient_key(settings: Settings) -> bytes:
    """The key of the keyed hash; generated once under state_dir when not configured (not in production)."""
    configured = settings.pacs_patient_key.get_secret_value()
    if configured:
        return configured.encode()
    if settings.environment == "production":
        raise ServiceUnavailable(
            "the PACS cannot be used: set MEDSEG_PACS_PATIENT_KEY (a Secret shared by every gateway replica) "
            "so that patient IDs from the PACS stay the same across replicas and restarts",
            code="pacs_unavailable",
        )
    path = Path(settings.state_dir) / PATIENT_KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker wrote it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    logger.info("generated the key for PACS patient IDs in %s", path)
    return path.read_bytes().strip()


def medseg_patient_id(pacs_patient_id: str | None, key: bytes) -> str | None:
    """The PACS PatientID as MedSeg keeps it (the module docstring says how); None when it has none."""
    value = (pacs_patient_id or "").strip()
    if not value:
        return None
    if PATIENT_ID.fullmatch(value):
        return value
    digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return HASHED_PREFIX + digest[:HASH_HEX_DIGITS].upper()


# --- what the pickers answer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundStudy:
    study_uid: str
    study_date: date | None
    description: str
    patient_id: str | None  # MedSeg's ID for the patient (mapped), never the PACS's own
    modalities: tuple[str, ...]
    series_count: int | None
    instance_count: int | None


class PacsGateway:
    """The PACS as the gateway's callers reach it; `pacs` is the DICOMweb client of the configured PACS."""

    def __init__(self, pacs: Pacs, settings: Settings):
        self.pacs = pacs
        self.settings = settings

    def admit(self, principal: Principal) -> None:
        """Doctors and hospital systems' keys (the access table's entry: also when a study is submitted from
        the PACS, which anyone who segments may do with files), of the hospitals in `pacs_hospitals` (empty:
        of everyone on this deployment)."""
        if principal.user is not None:
            ACCESS["pacs.studies"].check_role(principal.user)
        allowed = self.settings.pacs_hospitals
        if allowed and principal.hospital not in allowed:
            raise Forbidden("the configured PACS is another hospital's archive", code="pacs_forbidden")

    def patient_id(self, pacs_patient_id: str | None) -> str | None:
        return medseg_patient_id(pacs_patient_id, patient_key(self.settings))

    def search(
        self,
        principal: Principal,
        *,
        patient_id: str | None,
        modality: str | None,
        date_from: date | None,
        date_to: date | None,
        limit: int,
    ) -> list[FoundStudy]:
        self.admit(principal)
        found: list[PacsStudy] = self.pacs.search_studies(
            patient_id=patient_id, modality=modality, date_from=date_from, date_to=date_to, limit=limit
        )
        key = patient_key(self.settings)
        return [
            FoundStudy(
                study_uid=s.study_uid,
                study_date=s.study_date,
                description=s.description,
                patient_id=medseg_patient_id(s.patient_id, key),
                modalities=s.modalities,
                series_count=s.series_count,
                instance_count=s.instance_count,
            )
            for s in found
        ]

    def series(self, principal: Principal, study_uid: str) -> list[PacsSeries]:
        self.admit(principal)
        return self.pacs.list_series(study_uid)

    def fetch_for_study(
        self, principal: Principal, study_uid: str, series_uid: str
    ) -> tuple[SeriesInfo, list[bytes]]:
        """A series' instances for a study job: refused (4xx) before any pixel is fetched when it is not a
        CT or MR series, or larger than the study limit (the study job then checks it as any upload)."""
        self.admit(principal)
        info = self.pacs.series_info(study_uid, series_uid)
        if (info.modality or "").upper() not in SEGMENTABLE:
            raise InvalidInput(
                f"series {series_uid} is {info.modality or 'of no modality'}, not an image series MedSeg "
                f"segments ({' or '.join(SEGMENTABLE)})",
                code="wrong_modality",
            )
        files = self.pacs.fetch_series(
            study_uid, series_uid, max_bytes=self.settings.study_max_bytes, info=info
        )
        return info, files

    def submit(
        self,
        session: Session,
        principal: Principal,
        studies: StudyJobs,
        organ: str,
        source: PacsSource,
        patient_id: str | None,
    ) -> Study:
        """Fetch the series and submit it as a study (the same job as an upload); nothing is stored when the
        fetch fails or the series is refused."""
        studies.dataplane.registry.get(organ)  # an unknown organ is a 404 before the PACS is asked
        if patient_id is not None:
            check_patient_id(patient_id)
        info, files = self.fetch_for_study(principal, source.study_uid, source.series_uid)
        uploads = [Upload(f"{n:05d}.dcm", blob) for n, blob in enumerate(files)]
        mapped = patient_id or self.patient_id(info.patient_id)
        return studies.submit(session, principal, organ, uploads, mapped, None, pacs=source)

    def thumbnail(self, principal: Principal, study_uid: str, series_uid: str, size: int) -> bytes:
        """A PNG of the series' middle image, at most `size` pixels a side, windowed as the file says (else
        its value range), for the picker; 409 `pacs_no_image` for a series without one it can show (a SEG,
        a report, a compression it cannot decode)."""
        self.admit(principal)
        blob = self.pacs.middle_instance(study_uid, series_uid)
        try:
            decoded = imaging.decode_image(blob, min_side=1)
        except imaging.ImageDecodeError as exc:
            raise Conflict(
                f"series {series_uid} has no image to show: {exc}",
                code="pacs_no_image",
                params={"series_uid": series_uid},
            ) from None
        picture = Image.fromarray(np.round(np.clip(decoded.array, 0, 1) * 255).astype(np.uint8).squeeze())
        picture.thumbnail((size, size))
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return out.getvalue()

    def store_seg(self, row: Study, seg: bytes, threshold: float) -> dict:
        """STOW-RS the study's DICOM SEG into the PACS study it came from; the record the row keeps."""
        dataset = pydicom.dcmread(io.BytesIO(seg))
        (stored,) = self.pacs.store([dataset], row.pacs_study_uid)
        logger.info(
            "study %s: DICOM SEG at threshold %.1f stored in the PACS as series %s",
            row.id, threshold, dataset.SeriesInstanceUID,
        )  # fmt: skip
        return {
            "series_uid": str(dataset.SeriesInstanceUID),
            "sop_instance_uid": stored,
            "series_number": int(dataset.SeriesNumber),
            "threshold": threshold,
            "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
