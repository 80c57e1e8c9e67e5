"""Studies from the hospital's PACS end to end (issue 21): a real Orthanc, a real gateway process, the
shipped liver model on a real TorchServe. A CT series written from consecutive liver training slices
(tests/studydata.py) is stored in Orthanc by STOW-RS, segmented by its UIDs over HTTP and over gRPC, and its
DICOM SEG is found in Orthanc by QIDO-RS (Modality=SEG) referencing the source series; read back with
highdicom it overlaps the labels with Dice >= 0.95 (trained slices: this checks the plumbing, not the
model). Saving another threshold stores a new SEG series; a PACS that refuses the SEG fails the study
clearly with nothing half-kept.

The gateway's PACS is `refusing_pacs_server` (tests/fixtures/pacs.py): an Orthanc that keeps everything but
the SEGs of patient REFUSE-SEG, so one gateway shows both the stored result and the refused one.
"""

from __future__ import annotations

import io

import grpc
import highdicom as hd
import numpy as np
import pytest
from medseg.v1 import studies_pb2, studies_pb2_grpc
from pydicom.uid import generate_uid
from sqlalchemy import text

from common.pacs import Pacs
from tests import studydata
from tests.fixtures.pacs import REFUSED_PATIENT
from tests.studies.conftest import wait_finished
from tests.studies.test_studies_live import dice

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST, COUNT = 60, 24  # consecutive slices of the first patient (0–161)
PATIENT = "LIVER-PACS-1"  # a pseudonymous ID already: kept as it is
NAME = "Doe^Jane"


@pytest.fixture(scope="module")
def study_settings(study_settings, refusing_pacs_server):
    """The studies' live gateway, reaching the PACS (what MEDSEG_PACS_* configure)."""
    return study_settings.model_copy(
        update={
            "pacs_url": refusing_pacs_server.url,
            "pacs_credentials_file": refusing_pacs_server.credentials_path,
            "pacs_patient_key": "tests-live-patient-key",
        }
    )


@pytest.fixture(scope="module")
def pacs(refusing_pacs_server) -> Pacs:
    return Pacs(refusing_pacs_server.url, refusing_pacs_server.credentials)


@pytest.fixture(scope="module")
def client(study_gateway):
    with study_gateway.client(timeout=300) as http:
        yield http


def stored_series(pacs: Pacs, patient_id: str = PATIENT) -> list:
    """The liver run as a CT series of a study of its own in the PACS (the patient's name in its header)."""
    datasets = studydata.liver_dicom_datasets(
        FIRST, COUNT, study_uid=generate_uid(), series_uid=generate_uid(), patient_id=patient_id
    )
    for ds in datasets:
        ds.PatientName = NAME
    pacs.store(datasets, datasets[0].StudyInstanceUID)
    return datasets


def ref(datasets) -> dict:
    return {"study_uid": datasets[0].StudyInstanceUID, "series_uid": datasets[0].SeriesInstanceUID}


def segs_in_pacs(pacs: Pacs, datasets) -> list:
    return pacs.search_instances(datasets[0].StudyInstanceUID, Modality="SEG")


def seg_labels(pacs: Pacs, datasets, seg_series_uid: str) -> tuple[hd.seg.Segmentation, np.ndarray]:
    """The SEG fetched back from the PACS (WADO-RS), and its liver segment on the series' (i, j, k) grid."""
    (blob,) = pacs.fetch_series(datasets[0].StudyInstanceUID, seg_series_uid, max_bytes=64 * 1024 * 1024)
    seg = hd.seg.segread(io.BytesIO(blob))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets],  # k order
        segment_numbers=[1],
        assert_missing_frames_are_empty=True,
    )[..., 0]  # (k, row, column)
    return seg, np.transpose(pixels, (2, 1, 0))


def check_seg(pacs: Pacs, datasets, stored: dict) -> hd.seg.Segmentation:
    """The SEG `stored` names is in the PACS study, references the source series and overlaps the labels."""
    found = segs_in_pacs(pacs, datasets)
    assert stored["series_uid"] in {ds.SeriesInstanceUID for ds in found}
    seg, labels = seg_labels(pacs, datasets, stored["series_uid"])
    assert (
        seg.SOPInstanceUID == stored["sop_instance_uid"] and int(seg.SeriesNumber) == stored["series_number"]
    )
    assert {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence} == {datasets[0].SeriesInstanceUID}
    referenced = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert referenced <= {ds.SOPInstanceUID for ds in datasets} and referenced
    overlap = dice(labels, studydata.liver_dicom_labels(FIRST, COUNT))
    print(f"SEG from the PACS at threshold {stored['threshold']}: Dice {overlap:.4f} vs the labels")
    assert overlap >= 0.95
    return seg


@pytest.fixture(scope="module")
def http_study(client, pacs):
    datasets = stored_series(pacs)
    answer = client.post(
        "/api/v1/studies", json={"organ": "liver", "pacs": ref(datasets), "store_result": True}
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/api/v1/studies/{answer.json()['id']}"
    return wait_finished(client, answer.json()["id"]), datasets


def test_a_series_segmented_by_uid_over_http_stores_its_seg_in_the_pacs(pacs, http_study):
    study, datasets = http_study
    assert study["status"] == "done", study
    assert (
        study["source"] == "dicom" and study["shape"] == [COUNT, 512, 512] and study["patient_id"] == PATIENT
    )
    assert study["pacs"]["study_uid"] == datasets[0].StudyInstanceUID and study["pacs"]["store_result"]
    (stored,) = study["pacs"]["stored"]
    assert stored["threshold"] == study["default_threshold"]
    assert stored["series_number"] == datasets[0].SeriesNumber + 1000
    check_seg(pacs, datasets, stored)


def test_saving_another_threshold_stores_a_new_seg_series(client, pacs, http_study):
    study, datasets = http_study
    answer = client.post(f"/api/v1/studies/{study['id']}/choice", json={"threshold": 0.7, "note": "capsule"})
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["pacs"]["stored"]
    assert second["threshold"] == 0.7 and second["series_number"] == first["series_number"] + 1
    assert second["series_uid"] != first["series_uid"]
    assert {ds.SeriesInstanceUID for ds in segs_in_pacs(pacs, datasets)} == {
        first["series_uid"],
        second["series_uid"],
    }
    seg = check_seg(pacs, datasets, second)
    assert "threshold 0.7" in seg.ContentDescription
    again = client.post(f"/api/v1/studies/{study['id']}/choice", json={"threshold": 0.7})
    assert len(again.json()["pacs"]["stored"]) == 2  # that threshold is in the PACS already
    assert len(segs_in_pacs(pacs, datasets)) == 2


def test_a_series_segmented_by_uid_over_grpc_stores_its_seg_in_the_pacs(study_gateway, client, pacs):
    datasets = stored_series(pacs)
    metadata = (("authorization", f"Bearer {study_gateway.api_key}"),)
    with grpc.insecure_channel(study_gateway.grpc_address) as channel:
        stub = studies_pb2_grpc.StudiesStub(channel)
        first = studies_pb2.StudyUploadChunk(
            organ="liver", pacs=studies_pb2.PacsSeriesRef(**ref(datasets)), store_result=True
        )
        queued = stub.Submit(iter([first]), metadata=metadata, timeout=120)
        assert queued.pacs.study_uid == datasets[0].StudyInstanceUID and queued.patient_id == PATIENT
        states = list(stub.Watch(studies_pb2.GetStudyRequest(id=queued.id), metadata=metadata, timeout=300))
    assert states[-1].status == "done", states[-1]
    (stored,) = states[-1].pacs.stored
    assert stored.threshold == states[-1].default_threshold
    check_seg(pacs, datasets, client.get(f"/api/v1/studies/{queued.id}").json()["pacs"]["stored"][0])


def test_without_store_result_nothing_goes_back_to_the_pacs(client, pacs):
    datasets = stored_series(pacs)
    answer = client.post("/api/v1/studies", json={"organ": "liver", "pacs": ref(datasets)})
    study = wait_finished(client, answer.json()["id"])
    assert study["status"] == "done" and study["pacs"]["stored"] == [] and not study["pacs"]["store_result"]
    assert segs_in_pacs(pacs, datasets) == []
    chosen = client.post(f"/api/v1/studies/{study['id']}/choice", json={"threshold": 0.6})
    assert chosen.status_code == 200 and chosen.json()["pacs"]["stored"] == []
    assert segs_in_pacs(pacs, datasets) == []


def test_a_pacs_that_refuses_the_seg_fails_the_study_with_nothing_half_kept(
    study_gateway, client, pacs, objectstore
):
    datasets = stored_series(pacs, patient_id=REFUSED_PATIENT)  # the PACS keeps the CT, drops its SEGs
    answer = client.post(
        "/api/v1/studies", json={"organ": "liver", "pacs": ref(datasets), "store_result": True}
    )
    study = wait_finished(client, answer.json()["id"])
    assert study["status"] == "failed", study
    assert study["error"]["code"] == "pacs_store_refused" and pacs.url in study["error"]["message"]
    assert segs_in_pacs(pacs, datasets) == []
    keys = [o.key for o in objectstore.list(study_gateway.settings.bucket_results, prefix="studies/")]
    mine = [k for k in keys if study["id"] in k]
    assert mine and not [
        k for k in mine if "probability" in k
    ]  # the upload the failed row names, nothing more
    refused = client.post(f"/api/v1/studies/{study['id']}/choice", json={"threshold": 0.5})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "study_not_done"


def test_no_patient_name_is_kept_or_logged(study_gateway, http_study):
    with study_gateway.engine.connect() as conn:
        dump = " ".join(
            str(value)
            for table in ("studies", "audit_log")
            for record in conn.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
            for value in record
        )
    log = study_gateway.log_path.read_text(errors="replace")
    for part in ("Doe", "Jane"):
        assert part not in dump and part not in log, part
