"""Studies end to end on the real stack (issue 17): a real gateway process, the shipped liver model on a real
TorchServe, the object store, volumes built from consecutive liver training slices in the scanner's
convention (tests/studydata.py).

Those slices were trained on, so volume Dice here checks the plumbing — orientation, window, geometry, the
mask landing on the input's grid — not the model: a flipped row order or a wrong window costs far more than
the 0.05 the threshold leaves.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import time

import grpc
import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from medseg.v1 import studies_pb2, studies_pb2_grpc
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from tests import studydata
from tests.studies.conftest import STUDY_MAX_BYTES, wait_finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THRESHOLDS = ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8")
FIRST, COUNT = 40, 24  # consecutive slices of one patient (0–161)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def submit(client, files, **form):
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/v1/studies", data={"organ": "liver", **form}, files=parts)


def nifti(blob: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(blob))


def run(client, files, **form) -> dict:
    answer = submit(client, files, **form)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/api/v1/studies/{body['id']}"
    assert body["status"] in ("queued", "running", "done")
    done = wait_finished(client, body["id"])
    assert done["status"] == "done", done
    return done


@pytest.fixture(scope="module")
def client(study_gateway):
    with study_gateway.client(timeout=300) as http:
        yield http


@pytest.fixture(scope="module")
def nifti_study(client):
    data = studydata.liver_nifti(FIRST, COUNT)
    return run(client, [("liver.nii.gz", data)], patient_id="P-STUDY-1", study_date="2024-01-15"), data


def test_nifti_study_mask_lands_on_the_input_grid_with_the_labels(client, nifti_study):
    study, data = nifti_study
    source = nifti(data)
    assert study["shape"] == [COUNT, 512, 512]
    assert study["spacing_mm"] == pytest.approx([studydata.SLICE_MM, studydata.PIXEL_MM, studydata.PIXEL_MM])
    assert study["labels"] == ["liver"] and study["model"]["name"] == "liver"
    assert study["study_date"] == "2024-01-15" and study["patient_id"] == "P-STUDY-1"
    answer = client.get(f"/api/v1/studies/{study['id']}/mask.nii.gz", params={"threshold": 0.5})
    assert answer.status_code == 200 and answer.headers["x-medseg-threshold"] == "0.5"
    mask = nifti(answer.content)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    labels = studydata.liver_labels(FIRST, COUNT)
    assert dice(np.asanyarray(mask.dataobj), labels) >= 0.95
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}


def test_volumes_in_ml_shrink_as_the_threshold_rises(nifti_study):
    study, _ = nifti_study
    ml = [study["volumes_ml"][t]["liver"] for t in THRESHOLDS]
    assert all(a >= b for a, b in zip(ml, ml[1:], strict=False)) and ml[-1] > 0
    labels = studydata.liver_labels(FIRST, COUNT)
    expected = np.count_nonzero(labels) * studydata.PIXEL_MM**2 * studydata.SLICE_MM / 1000.0
    assert study["volumes_ml"]["0.5"]["liver"] == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("layout", ["flip_jk", "permuted_flipped", "las"])
def test_flipped_and_permuted_inputs_give_the_same_mask_after_reorientation(client, nifti_study, layout):
    base_study, base_data = nifti_study
    base = nifti(client.get(f"/api/v1/studies/{base_study['id']}/mask.nii.gz").content)
    data = studydata.liver_nifti(FIRST, COUNT, layout=layout)
    study = run(client, [(f"liver-{layout}.nii.gz", data)])
    mask = nifti(client.get(f"/api/v1/studies/{study['id']}/mask.nii.gz").content)
    source = nifti(data)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    # the layout's mask brought back to the base grid is the base study's mask, voxel for voxel
    back = apply_orientation(
        np.asanyarray(mask.dataobj), ornt_transform(io_orientation(mask.affine), io_orientation(base.affine))
    )
    np.testing.assert_array_equal(back, np.asanyarray(base.dataobj))
    assert study["volumes_ml"] == base_study["volumes_ml"]


def test_dicom_series_in_reverse_order_gives_a_mask_and_a_dicom_seg(client):
    files = studydata.liver_dicom_series(FIRST, COUNT, reverse=True)
    study = run(client, files, study_date="2020-01-01")
    assert study["source"] == "dicom"
    assert study["study_date"] == studydata.STUDY_DATE.isoformat()  # the series' StudyDate wins
    assert study["patient_id"] == studydata.PATIENT_ID
    mask = nifti(client.get(f"/api/v1/studies/{study['id']}/mask.nii.gz").content)
    labels = studydata.liver_labels(FIRST, COUNT)  # the base grid: what a DICOM→NIfTI converter writes
    assert mask.shape == labels.shape
    np.testing.assert_allclose(mask.affine, studydata.base_affine(labels.shape), atol=1e-4)
    assert dice(np.asanyarray(mask.dataobj), labels) >= 0.95

    answer = client.get(f"/api/v1/studies/{study['id']}/seg.dcm", params={"threshold": 0.5})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(answer.content))
    sources = [pydicom.dcmread(io.BytesIO(b)) for _, b in files]
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert [int(n) for n in seg.get_segment_numbers()] == [1]
    assert seg.get_segment_description(1).SegmentLabel == "liver"
    referenced = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    # the SEG's frames, placed by their source instances, are the mask's slices
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[
            ds.SOPInstanceUID for ds in sorted(sources, key=lambda d: d.ImagePositionPatient[2])
        ],
        segment_numbers=[1],
    )[..., 0]
    expected = np.transpose(np.asanyarray(mask.dataobj), (2, 1, 0))  # (slice, row, column)
    np.testing.assert_array_equal(pixels.astype(np.uint8), expected)


def test_a_nifti_study_has_no_dicom_seg(client, nifti_study):
    study, _ = nifti_study
    answer = client.get(f"/api/v1/studies/{study['id']}/seg.dcm")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "not_dicom"


def test_a_nifti_in_a_zip_is_kept_as_the_zip_and_shown_from_it(study_gateway, objectstore, client):
    """The upload is stored as it came (here: the zip), and the viewer's image and the mask are still the
    NIfTI's grid and values."""
    data = studydata.liver_nifti(FIRST, 12)
    zipped = studydata.zipped([("case/liver.nii.gz", data)])
    study = run(client, [("case.zip", zipped)])
    bucket, prefix = study_gateway.settings.bucket_results, f"studies/liver/{study['id']}/"
    names = {o.key.rsplit("/", 1)[-1] for o in objectstore.list(bucket, prefix=prefix)}
    assert "source.zip" in names and not names & {"source.nii.gz", "source.nii"}, names
    assert objectstore.get_bytes(bucket, prefix + "source.zip") == zipped
    source = nifti(data)
    image = client.get(f"/api/v1/studies/{study['id']}/image.nii.gz")
    assert image.status_code == 200, image.text
    shown = nifti(image.content)
    assert shown.shape == source.shape
    np.testing.assert_allclose(shown.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(shown.dataobj), np.asanyarray(source.dataobj))
    mask = client.get(f"/api/v1/studies/{study['id']}/mask.nii.gz", params={"threshold": 0.5})
    assert nifti(mask.content).shape == source.shape


def test_progress_is_reported_and_only_grows(client):
    study = run(client, [("p.nii.gz", studydata.liver_nifti(FIRST, COUNT, layout="ras"))])
    seen = study["_progress_seen"]
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_trend_has_one_point_per_study_in_ml_by_study_date(client):
    a = run(
        client,
        [("a.nii.gz", studydata.liver_nifti(FIRST, COUNT))],
        patient_id="P-TREND",
        study_date="2024-05-02",
    )
    b = run(
        client,
        [("b.nii.gz", studydata.liver_nifti(FIRST, 12))],
        patient_id="P-TREND",
        study_date="2024-02-01",
    )
    trend = client.get("/api/v1/patients/P-TREND/trend").json()
    points = trend["studies"]
    assert [p["study_id"] for p in points] == [b["id"], a["id"]]  # by study date, not by upload
    assert [p["study_date"] for p in points] == ["2024-02-01", "2024-05-02"]
    assert all(p["threshold"] == 0.5 and not p["chosen"] for p in points)
    assert points[1]["volumes_ml"]["liver"] == a["volumes_ml"]["0.5"]["liver"]
    assert trend["points"] == []  # no 2-D image of this patient: nothing in px or mm² mixed in
    chosen = client.post(f"/api/v1/studies/{a['id']}/choice", json={"threshold": 0.3})
    assert chosen.status_code == 200 and chosen.json()["chosen_threshold"] == 0.3
    again = client.get("/api/v1/patients/P-TREND/trend").json()["studies"][1]
    assert again["chosen"] and again["threshold"] == 0.3
    assert again["volumes_ml"]["liver"] == a["volumes_ml"]["0.3"]["liver"]
    listed = client.get("/api/v1/studies", params={"patient_id": "P-TREND"}).json()["studies"]
    assert {s["id"] for s in listed} == {a["id"], b["id"]}


def test_cancel_a_study(client):
    answer = submit(client, [("c.nii.gz", studydata.liver_nifti(0, 60))])
    assert answer.status_code == 202, answer.text
    study_id = answer.json()["id"]
    cancelled = client.post(f"/api/v1/studies/{study_id}/cancel")
    assert cancelled.status_code == 200
    done = wait_finished(client, study_id)
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    again = client.post(f"/api/v1/studies/{study_id}/cancel")
    assert again.status_code == 409
    assert client.get(f"/api/v1/studies/{study_id}/mask.nii.gz").status_code == 409


def test_a_gateway_killed_during_a_study_resumes_it_after_restart(study_gateway, client):
    answer = submit(client, [("r.nii.gz", studydata.liver_nifti(0, 70))])
    assert answer.status_code == 202, answer.text
    study_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/studies/{study_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    study_gateway.kill()
    study_gateway.start(required=("organ:liver", "objectstore"))
    with study_gateway.client(timeout=300) as fresh:
        done = wait_finished(fresh, study_id)
    assert done["status"] == "done", done
    assert done["volumes_ml"]["0.5"]["liver"] > 0


# --- bad input: a clear 4xx, nothing stored -------------------------------------------------------------
def _count(study_gateway, objectstore):
    from sqlalchemy import func, select

    from gateway.models import Study

    with study_gateway.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(Study)).scalar_one()
    objects = len(objectstore.list(study_gateway.settings.bucket_results, prefix="studies/"))
    return rows, objects


def _two_series():
    a = studydata.liver_dicom_series(FIRST, 4, series_number=2)
    b = studydata.liver_dicom_series(FIRST, 4, series_number=3, series_description="another")
    return [("two.zip", studydata.zipped([(f"a/{n}", d) for n, d in a] + [(f"b/{n}", d) for n, d in b]))]


def _missing_slice():
    files = studydata.liver_dicom_series(FIRST, 8)
    return files[:3] + files[4:]


def _four_d():
    image = studydata.liver_nifti_image(FIRST, 4)
    four = nib.Nifti1Image(np.stack([np.asanyarray(image.dataobj)] * 2, axis=-1), image.affine)
    return [("4d.nii", four.to_bytes())]


def _nans():
    image = studydata.liver_nifti_image(FIRST, 4, dtype="float32")
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[5, 5, 1] = np.nan
    return [("nan.nii", nib.Nifti1Image(data, image.affine).to_bytes())]


def _no_pixels():
    ds = studydata.liver_dicom_datasets(FIRST, 1)[0]
    del ds.PixelData
    return [("nopixels.dcm", studydata.dicom_file_bytes(ds))]


def _huge_header():
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header.set_data_shape((2048, 2048, 256))  # 2 GB of int16 declared
    return [("huge.nii", image.header.binaryblock + b"\0" * 4 + b"\0" * 16)]


def _zip_bomb():
    return [("bomb.zip", studydata.zipped([("zeros.dcm", b"\0" * (300 * 1024 * 1024))]))]


@pytest.mark.parametrize(
    "make, status",
    [
        (_two_series, 409),
        (_missing_slice, 400),
        (_four_d, 400),
        (_nans, 400),
        (_no_pixels, 400),
        (_huge_header, 413),
        (_zip_bomb, 413),
        (lambda: [("notes.txt", b"hello")], 400),
    ],
)
def test_bad_input_is_a_clear_4xx_and_nothing_is_stored(study_gateway, objectstore, client, make, status):
    before = _count(study_gateway, objectstore)
    answer = submit(client, make())
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] and error["message"]
    assert _count(study_gateway, objectstore) == before


def test_a_declared_oversized_upload_is_refused_before_reading(study_gateway):
    """Content-Length over the study limit: 413 from the headers, before any of the body is read."""
    url = httpx.URL(study_gateway.http_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=60)
    try:
        conn.putrequest("POST", "/api/v1/studies")
        conn.putheader("Authorization", f"Bearer {study_gateway.api_key}")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(STUDY_MAX_BYTES * 2))
        conn.endheaders()
        conn.send(b"--x\r\n")  # a few bytes of the declared 80 MB
        answer = conn.getresponse()
        assert answer.status == 413
        assert json.loads(answer.read())["error"]["code"] == "payload_too_large"
    finally:
        conn.close()


def test_unknown_study_and_bad_threshold(client, nifti_study):
    assert client.get("/api/v1/studies/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/api/v1/studies/not-a-uuid").status_code == 404
    study, _ = nifti_study
    assert (
        client.get(f"/api/v1/studies/{study['id']}/mask.nii.gz", params={"threshold": 0.9}).status_code == 400
    )


# --- gRPC ---------------------------------------------------------------------------------------------
def test_grpc_submit_watch_and_mask_in_chunks(study_gateway, client):
    data = studydata.liver_nifti(FIRST, COUNT)
    metadata = (("authorization", f"Bearer {study_gateway.api_key}"),)
    options = [("grpc.max_receive_message_length", 4 * 1024 * 1024)]  # the default: chunks must fit it
    with grpc.insecure_channel(study_gateway.grpc_address, options=options) as channel:
        stub = studies_pb2_grpc.StudiesStub(channel)

        def chunks():
            yield studies_pb2.StudyUploadChunk(organ="liver", patient_id="P-GRPC", filename="v.nii.gz")
            for start in range(0, len(data), 256 * 1024):
                yield studies_pb2.StudyUploadChunk(filename="v.nii.gz", data=data[start : start + 256 * 1024])

        queued = stub.Submit(chunks(), metadata=metadata, timeout=120)
        assert queued.status in ("queued", "running", "done") and queued.organ == "liver"
        states = list(stub.Watch(studies_pb2.GetStudyRequest(id=queued.id), metadata=metadata, timeout=300))
        assert states[-1].status == "done"
        assert [s.progress for s in states] == sorted(s.progress for s in states)
        parts = list(
            stub.GetMask(studies_pb2.GetStudyResultRequest(id=queued.id, threshold=0.5), metadata=metadata)
        )
        assert parts[0].content_type == "application/gzip" and parts[0].threshold == 0.5
        blob = b"".join(p.data for p in parts)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSeg(studies_pb2.GetStudyResultRequest(id=queued.id), metadata=metadata).next()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    http = client.get(f"/api/v1/studies/{queued.id}").json()
    assert http["volumes_ml"] == {k: dict(v) for k, v in states[-1].volumes_ml.items()}
    mask = nifti(blob)
    assert dice(np.asanyarray(mask.dataobj), studydata.liver_labels(FIRST, COUNT)) >= 0.95
