"""The hospital's PACS over DICOMweb, through dicomweb-client: QIDO-RS to search, WADO-RS to fetch a series,
STOW-RS to store (a DICOM SEG) back.

Every call raises the platform's errors, never a requests or dicomweb-client one:
- the PACS down, timing out, answering 5xx or something that is not DICOMweb → ServiceUnavailable naming
  the PACS (code `pacs_unavailable`);
- 401/403 from the PACS → ServiceUnavailable "PACS refused our credentials" (`pacs_credentials`): it is our
  configuration, not the caller's fault;
- a study or series it does not hold → NotFound (`pacs_not_found`);
- a series larger than the caller's byte limit → PayloadTooLarge (`pacs_series_too_large`), from its
  metadata before any pixel is fetched, and again while streaming should the metadata have understated it;
- STOW-RS refused (an HTTP error, or a FailedSOPSequence in the answer) → ServiceUnavailable
  (`pacs_store_refused`) with the PACS's reason.

Patient names are never read here: a study's patient is its PatientID alone.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from common.errors import InvalidInput, MedSegError, NotFound, PayloadTooLarge, ServiceUnavailable
from common.settings import Settings

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "pacs-credentials.json"  # written by the local PACS launcher (tools/pacs_server.py)
UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MODALITY = re.compile(r"[A-Z0-9]{1,16}")
# A PatientID as a search term: DICOM's LO value (at most 64 characters, no backslash or control characters);
# `*` and `?` keep their QIDO meaning of wildcards.
SEARCH_PATIENT_ID = re.compile(r"[^\\\x00-\x1f\x7f]{1,64}")
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # as stored: a compressed series stays compressed
_PART10_OVERHEAD = 4096  # bytes per instance beyond its pixels (preamble, meta, header), for the early check

STUDY_FIELDS = (
    "StudyInstanceUID", "StudyDate", "StudyDescription", "PatientID", "AccessionNumber",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_FIELDS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)  # fmt: skip


@dataclass(frozen=True)
class PacsCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"PacsCredentials(username={self.username!r})"


def read_credentials_file(path: Path) -> PacsCredentials | None:
    """{"username", "password"} from a credentials file, or None when there is none."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return PacsCredentials(str(data["username"]), str(data["password"]))


def credentials_path(settings: Settings) -> Path:
    return settings.pacs_credentials_file or Path(settings.state_dir) / CREDENTIALS_FILE


def resolve_credentials(settings: Settings) -> PacsCredentials:
    """MEDSEG_PACS_USERNAME/PASSWORD when set, else the credentials file (the one `make up` generates)."""
    if settings.pacs_username:
        return PacsCredentials(settings.pacs_username, settings.pacs_password.get_secret_value())
    path = credentials_path(settings)
    try:
        creds = read_credentials_file(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ServiceUnavailable(
            f"PACS unavailable: its credentials file {path} does not read ({exc})", code="pacs_unavailable"
        ) from None
    if creds is None:
        raise ServiceUnavailable(
            "PACS unavailable: no credentials (set MEDSEG_PACS_USERNAME and MEDSEG_PACS_PASSWORD, or "
            f"MEDSEG_PACS_CREDENTIALS_FILE, or start the local PACS with `make up`, which generates {path})",
            code="pacs_unavailable",
        )
    return creds


@dataclass(frozen=True)
class PacsStudy:
    study_uid: str
    study_date: date | None
    description: str
    patient_id: str | None  # the PACS's PatientID (never the name)
    accession_number: str | None
    modalities: tuple[str, ...]
    series_count: int | None
    instance_count: int | None


@dataclass(frozen=True)
class PacsSeries:
    series_uid: str
    modality: str | None
    number: int | None
    description: str
    body_part: str | None
    instance_count: int | None


@dataclass(frozen=True)
class SeriesInfo:
    """What a series' metadata says before its pixels are fetched."""

    study_uid: str
    series_uid: str
    modality: str | None
    patient_id: str | None
    instance_count: int
    estimated_bytes: int


def check_uid(value: str, what: str) -> str:
    if not (isinstance(value, str) and len(value) <= 64 and UID.fullmatch(value)):
        raise InvalidInput(
            f"{what} must be a DICOM UID (digits and dots, at most 64 characters); got {str(value)[:80]!r}",
            code="invalid_uid",
        )
    return value


class Pacs:
    """One DICOMweb service (its base URL, e.g. http://127.0.0.1:8042/dicom-web) with HTTP basic auth."""

    def __init__(
        self,
        url: str,
        credentials: PacsCredentials | Callable[[], PacsCredentials] | None,
        *,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 30.0,
        chunk_bytes: int = 1024 * 1024,
    ):
        """`credentials`: the PACS's user, or a function that finds it at the first call (a credentials file
        `make up` writes may appear after the gateway started), or None for a PACS without authentication."""
        self.url = url.rstrip("/")
        self._credentials = credentials
        self._timeout = (connect_timeout_s, timeout_s)
        self._chunk_bytes = chunk_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Pacs:
        return cls(
            settings.pacs_url,
            lambda: resolve_credentials(settings),
            connect_timeout_s=settings.pacs_connect_timeout_s,
            timeout_s=settings.pacs_timeout_s,
        )

    def _client(self) -> DICOMwebClient:
        if callable(self._credentials):
            self._credentials = self._credentials()
        session = requests.Session()
        if self._credentials is not None:
            session.auth = (self._credentials.username, self._credentials.password)
        try:
            client = DICOMwebClient(
                self.url, session=session, timeout=self._timeout, chunk_size=self._chunk_bytes
            )
        except ValueError as exc:
            raise ServiceUnavailable(
                f"PACS URL {self.url!r} is not usable: {exc}", code="pacs_unavailable"
            ) from None
        client.set_http_retry_params(retry=False)  # answer the caller now; the caller may try again
        return client

    @contextmanager
    def _errors(self, what: str, *, not_found: str | None = None) -> Iterator[None]:
        """Turn what requests and dicomweb-client raise during `what` into the platform's errors."""
        try:
            yield
        except MedSegError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise ServiceUnavailable(
                    f"PACS refused our credentials ({status} from {self.url} while {what}): check "
                    "MEDSEG_PACS_USERNAME/MEDSEG_PACS_PASSWORD or the PACS credentials file",
                    code="pacs_credentials",
                ) from None
            if status == 404 and not_found:
                raise NotFound(not_found, code="pacs_not_found") from None
            raise ServiceUnavailable(
                f"PACS at {self.url} answered {status} while {what}{_reason(exc.response)}",
                code="pacs_unavailable",
            ) from None
        except requests.Timeout:
            raise ServiceUnavailable(
                f"PACS at {self.url} timed out while {what} (no answer within {self._timeout[1]:.0f} s)",
                code="pacs_unavailable",
            ) from None
        except requests.RequestException as exc:  # refused, reset, cut off mid-answer
            raise ServiceUnavailable(
                f"PACS at {self.url} unavailable while {what}: {type(exc).__name__}", code="pacs_unavailable"
            ) from None
        except (ValueError, KeyError, TypeError, pydicom.errors.InvalidDicomError) as exc:
            raise ServiceUnavailable(
                f"PACS at {self.url} answered something that is not DICOMweb while {what}: {exc}",
                code="pacs_unavailable",
            ) from None

    # --- QIDO-RS ------------------------------------------------------------------------------------
    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        modality: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        limit: int = 100,
    ) -> list[PacsStudy]:
        """Studies matching every filter given (none: the PACS's first `limit` studies)."""
        filters: dict[str, str] = {}
        if patient_id is not None:
            if not SEARCH_PATIENT_ID.fullmatch(patient_id):
                raise InvalidInput(
                    "patient_id to search for: 1-64 characters without backslash or control characters",
                    code="invalid_patient_id",
                )
            filters["PatientID"] = patient_id
        if modality is not None:
            modality = modality.upper()
            if not MODALITY.fullmatch(modality):
                raise InvalidInput(
                    f"modality {modality[:20]!r} is not a DICOM modality (e.g. CT, MR)",
                    code="invalid_modality",
                )
            filters["ModalitiesInStudy"] = modality
        if date_from and date_to and date_from > date_to:
            raise InvalidInput(f"date_from {date_from} is after date_to {date_to}", code="invalid_date_range")
        if date_from or date_to:
            filters["StudyDate"] = f"{_da(date_from)}-{_da(date_to)}"
        with self._errors("searching studies"):
            found = self._client().search_for_studies(
                search_filters=filters, fields=STUDY_FIELDS, limit=limit
            )
            return [_study(_from_json(item)) for item in found]

    def list_series(self, study_uid: str) -> list[PacsSeries]:
        """The series of one study, by series number (NotFound when the PACS holds no such study)."""
        check_uid(study_uid, "study_uid")
        missing = f"the PACS holds no study {study_uid}"
        with self._errors(f"listing the series of study {study_uid}", not_found=missing):
            found = self._client().search_for_series(study_uid, fields=SERIES_FIELDS)
            series = [_series(_from_json(item)) for item in found]
        if not series:
            raise NotFound(missing, code="pacs_not_found")
        return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    # --- WADO-RS ------------------------------------------------------------------------------------
    def series_info(self, study_uid: str, series_uid: str) -> SeriesInfo:
        """Modality, patient, instance count and an estimate of the bytes of a series, from its metadata."""
        check_uid(study_uid, "study_uid")
        check_uid(series_uid, "series_uid")
        missing = f"the PACS holds no series {series_uid} in study {study_uid}"
        with self._errors(f"reading the metadata of series {series_uid}", not_found=missing):
            metadata = [
                _from_json(item) for item in self._client().retrieve_series_metadata(study_uid, series_uid)
            ]
        if not metadata:
            raise NotFound(missing, code="pacs_not_found")
        first = metadata[0]
        return SeriesInfo(
            study_uid=study_uid,
            series_uid=series_uid,
            modality=_text(first, "Modality"),
            patient_id=_text(first, "PatientID"),
            instance_count=len(metadata),
            estimated_bytes=sum(_pixel_bytes(item) + _PART10_OVERHEAD for item in metadata),
        )

    def fetch_series(
        self,
        study_uid: str,
        series_uid: str,
        *,
        max_bytes: int,
        info: SeriesInfo | None = None,
        on_instance: Callable[[int, int], None] | None = None,
    ) -> list[bytes]:
        """Every instance of the series as a DICOM file (bytes), streamed from the PACS: refused before the
        fetch when its metadata says it is larger than `max_bytes`, and cut off once it grows past that.
        `on_instance(received, expected)` is called after each instance."""
        info = info or self.series_info(study_uid, series_uid)
        _check_size(info.estimated_bytes, max_bytes, series_uid)
        files: list[bytes] = []
        total = 0
        with self._errors(
            f"fetching series {series_uid}", not_found=f"the PACS holds no series {series_uid}"
        ):
            stream = self._client().iter_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX)
            try:
                for dataset in stream:
                    blob = _part10(dataset)
                    total += len(blob)
                    _check_size(total, max_bytes, series_uid)
                    files.append(blob)
                    if on_instance:
                        on_instance(len(files), info.instance_count)
            finally:
                stream.close()  # a refusal mid-stream closes the response (the connection is not reused)
        if not files:
            raise NotFound(f"the PACS sent no instances of series {series_uid}", code="pacs_not_found")
        if len(files) != info.instance_count:  # an answer cut short that still parsed: never half a series
            raise ServiceUnavailable(
                f"PACS at {self.url} sent {len(files)} of the {info.instance_count} instances of series "
                f"{series_uid}",
                code="pacs_unavailable",
            )
        return files

    def middle_instance(self, study_uid: str, series_uid: str) -> bytes:
        """The middle instance of a series by InstanceNumber (QIDO-RS, then WADO-RS of that one instance) as
        a DICOM file: what a picker's thumbnail is rendered from."""
        check_uid(study_uid, "study_uid")
        check_uid(series_uid, "series_uid")
        missing = f"the PACS holds no series {series_uid} in study {study_uid}"
        with self._errors(f"reading an instance of series {series_uid}", not_found=missing):
            client = self._client()
            found = [
                _from_json(item)
                for item in client.search_for_instances(
                    study_uid, series_uid, fields=("InstanceNumber", "SOPInstanceUID")
                )
            ]
            if not found:
                raise NotFound(missing, code="pacs_not_found")
            found.sort(key=lambda ds: (_int(ds, "InstanceNumber") is None, _int(ds, "InstanceNumber") or 0))
            middle = str(found[len(found) // 2].SOPInstanceUID)
            dataset = client.retrieve_instance(study_uid, series_uid, middle, media_types=ANY_TRANSFER_SYNTAX)
            return _part10(dataset)

    # --- STOW-RS ------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], study_uid: str) -> list[str]:
        """Store instances into a study; their SOP Instance UIDs once the PACS holds them (else raises)."""
        check_uid(study_uid, "study_uid")
        with self._errors(f"storing {len(datasets)} instance(s) into study {study_uid}"):
            try:
                files = [pydicom.dcmread(io.BytesIO(_part10(ds))) for ds in datasets]
                answer = self._client().store_instances(files, study_instance_uid=study_uid)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status in (401, 403) or status >= 500:
                    raise
                raise ServiceUnavailable(
                    f"PACS at {self.url} refused to store into study {study_uid} ({status})"
                    + _reason(exc.response),
                    code="pacs_store_refused",
                ) from None
        failed = [
            f"{getattr(item, 'ReferencedSOPInstanceUID', '?')} (reason {getattr(item, 'FailureReason', '?')})"
            for item in getattr(answer, "FailedSOPSequence", None) or []
        ]
        if failed:
            raise ServiceUnavailable(
                f"PACS at {self.url} refused to store into study {study_uid}: {', '.join(failed)}",
                code="pacs_store_refused",
            )
        # A PACS may confirm an instance its own rules then dropped (Orthanc does, for one its filter
        # refuses): only what QIDO-RS then finds counts as stored.
        expected = [str(ds.SOPInstanceUID) for ds in datasets]
        held = {
            str(ds.SOPInstanceUID)
            for uid in expected
            for ds in self.search_instances(study_uid, SOPInstanceUID=uid)
        }
        missing = [uid for uid in expected if uid not in held]
        if missing:
            raise ServiceUnavailable(
                f"PACS at {self.url} did not keep what it was sent into study {study_uid} (refused by its "
                f"own rules?): {', '.join(missing)}",
                code="pacs_store_refused",
            )
        return expected

    def search_instances(self, study_uid: str, **filters: str) -> list[Dataset]:
        """Instances of a study matching DICOM attribute filters (e.g. Modality="SEG"), as QIDO-RS answers."""
        check_uid(study_uid, "study_uid")
        with self._errors(f"searching instances of study {study_uid}"):
            found = self._client().search_for_instances(study_uid, search_filters=filters)
            return [_from_json(item) for item in found]


def _from_json(item: dict) -> Dataset:
    """A DICOM JSON data set; bulk data (pixels, left out of metadata as URIs) is never fetched."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")


def _check_size(size: int, limit: int, series_uid: str) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"series {series_uid} is larger than the study limit of {limit} bytes (at least {size} bytes)",
            code="pacs_series_too_large",
        )


def _part10(dataset: Dataset) -> bytes:
    """An instance as a DICOM file: preamble, file meta, data set. (dicomweb-client's STOW-RS writes a data
    set as it is, so one made in memory, e.g. a highdicom SEG, would be stored without its preamble and
    `DICM`, which readers, dicomweb-client's own among them, then refuse.)"""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _pixel_bytes(meta: Dataset) -> int:
    """Uncompressed pixel bytes of one instance from its metadata (0 when it says nothing)."""
    try:
        rows, cols = int(meta.get("Rows", 0) or 0), int(meta.get("Columns", 0) or 0)
        bits = int(meta.get("BitsAllocated", 8) or 8)
        samples = int(meta.get("SamplesPerPixel", 1) or 1)
        frames = int(meta.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 0
    return rows * cols * samples * frames * max(bits, 8) // 8


def _da(value: date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(ds: Dataset, keyword: str) -> date | None:
    value = _text(ds, keyword)
    if not value or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _study(ds: Dataset) -> PacsStudy:
    modalities = ds.get("ModalitiesInStudy") or ()
    if isinstance(modalities, str):
        modalities = (modalities,)
    return PacsStudy(
        study_uid=str(ds.StudyInstanceUID),
        study_date=_date(ds, "StudyDate"),
        description=_text(ds, "StudyDescription") or "",
        patient_id=_text(ds, "PatientID"),
        accession_number=_text(ds, "AccessionNumber"),
        modalities=tuple(str(m) for m in modalities if m),
        series_count=_int(ds, "NumberOfStudyRelatedSeries"),
        instance_count=_int(ds, "NumberOfStudyRelatedInstances"),
    )


def _series(ds: Dataset) -> PacsSeries:
    return PacsSeries(
        series_uid=str(ds.SeriesInstanceUID),
        modality=_text(ds, "Modality"),
        number=_int(ds, "SeriesNumber"),
        description=_text(ds, "SeriesDescription") or "",
        body_part=_text(ds, "BodyPartExamined"),
        instance_count=_int(ds, "NumberOfSeriesRelatedInstances"),
    )


def _reason(response: requests.Response | None) -> str:
    """The PACS's own words about an error, short (Orthanc answers JSON with a Message)."""
    if response is None:
        return ""
    try:
        body = response.json()
        text = body.get("Message") or body.get("Details") if isinstance(body, dict) else None
    except ValueError:
        text = response.text
    text = " ".join(str(text or "").split())[:200]
    return f": {text}" if text else ""
