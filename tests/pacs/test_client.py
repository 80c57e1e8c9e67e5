"""common.pacs against a real Orthanc: QIDO-RS search, WADO-RS fetch within a byte limit, STOW-RS store, and
every failure as our error naming the PACS (down, killed mid-fetch, wrong credentials, refusal)."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import date

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from common.launcher import free_port
from common.pacs import Pacs, PacsCredentials
from tests.fixtures.pacs import REFUSED_PATIENT
from tests.pacsdata import ct_series

pytestmark = pytest.mark.integration


def seg_of(series: list, label: str = "liver") -> hd.seg.Segmentation:
    """A binary DICOM SEG of the series (a square in every slice), as highdicom writes one."""
    mask = np.zeros((len(series), series[0].Rows, series[0].Columns), dtype=bool)
    mask[:, 8:24, 8:24] = True
    return hd.seg.Segmentation(
        source_images=series,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label=label,
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=codes.SCT.Liver,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="test", version="1", family=codes.cid7162.ArtificialIntelligence
                ),
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="MedSeg",
        manufacturer_model_name="MedSeg test",
        software_versions="0",
        device_serial_number="0",
    )


@pytest.fixture(scope="module")
def stored(pacs):
    """One CT study of a patient of its own, stored by STOW-RS."""
    series = ct_series(6, patient_id=f"P-{uuid.uuid4().hex[:10]}", study_date="20240115")
    uids = pacs.store(series, series[0].StudyInstanceUID)
    assert uids == [ds.SOPInstanceUID for ds in series]
    return series


def test_search_list_and_fetch_give_back_what_was_stored(pacs, stored):
    first = stored[0]
    (study,) = pacs.search_studies(patient_id=first.PatientID)
    assert study.study_uid == first.StudyInstanceUID and study.patient_id == first.PatientID
    assert study.study_date == date(2024, 1, 15) and study.modalities == ("CT",) and study.instance_count == 6
    in_range = pacs.search_studies(patient_id=first.PatientID, modality="ct", date_from=date(2024, 1, 15))
    assert [s.study_uid for s in in_range] == [study.study_uid]
    assert pacs.search_studies(patient_id=first.PatientID, date_to=date(2024, 1, 14)) == []
    assert pacs.search_studies(patient_id=first.PatientID, modality="MR") == []

    (series,) = pacs.list_series(study.study_uid)
    assert (series.series_uid, series.modality, series.number, series.instance_count) == (
        first.SeriesInstanceUID, "CT", 2, 6,
    )  # fmt: skip
    info = pacs.series_info(study.study_uid, series.series_uid)
    assert (info.modality, info.patient_id, info.instance_count) == ("CT", first.PatientID, 6)
    assert info.estimated_bytes >= 6 * 64 * 64 * 2

    seen = []
    files = pacs.fetch_series(
        study.study_uid, series.series_uid, max_bytes=10**6, on_instance=lambda *a: seen.append(a)
    )
    assert seen[-1] == (6, 6)
    sent = {ds.SOPInstanceUID: ds.PixelData for ds in stored}
    got = {ds.SOPInstanceUID: ds.PixelData for ds in (pydicom.dcmread(io.BytesIO(f)) for f in files)}
    assert got == sent  # every instance, pixels byte for byte, each a DICOM file pydicom reads


def test_unknown_study_or_series_is_not_found(pacs, stored):
    study = stored[0].StudyInstanceUID
    with pytest.raises(NotFound) as missing_study:
        pacs.list_series("1.2.3.4.5")
    with pytest.raises(NotFound) as missing_series:
        pacs.fetch_series(study, "1.2.3.4.5", max_bytes=10**6)
    assert missing_study.value.code == missing_series.value.code == "pacs_not_found"
    assert "1.2.3.4.5" in missing_series.value.message


def test_bad_search_terms_are_refused_before_the_pacs_is_asked():
    nowhere = Pacs(f"http://127.0.0.1:{free_port()}/dicom-web", PacsCredentials("u", "p"))
    for call in (
        lambda: nowhere.list_series("1.2.abc"),
        lambda: nowhere.fetch_series("1.2.3", "../../instances", max_bytes=1),
        lambda: nowhere.search_studies(modality="C T"),
        lambda: nowhere.search_studies(patient_id="P\\1"),
        lambda: nowhere.search_studies(date_from=date(2024, 2, 1), date_to=date(2024, 1, 1)),
    ):
        with pytest.raises(InvalidInput):  # not a 503: nothing was sent
            call()


def test_a_series_over_the_limit_is_refused_before_its_pixels_are_fetched(pacs, stored):
    first, seen = stored[0], []
    with pytest.raises(PayloadTooLarge) as refused:
        pacs.fetch_series(
            first.StudyInstanceUID, first.SeriesInstanceUID, max_bytes=20_000, on_instance=seen.append
        )
    assert refused.value.code == "pacs_series_too_large" and seen == []


def test_a_series_larger_than_its_metadata_said_is_cut_off_while_streaming(pacs, stored):
    first, seen = stored[0], []
    info = pacs.series_info(first.StudyInstanceUID, first.SeriesInstanceUID)
    understated = dataclasses.replace(info, estimated_bytes=0)
    with pytest.raises(PayloadTooLarge):
        pacs.fetch_series(
            first.StudyInstanceUID, first.SeriesInstanceUID, max_bytes=64 * 64 * 2 + 4000,
            info=understated, on_instance=lambda n, _: seen.append(n),
        )  # fmt: skip
    assert seen == [1]  # the second instance went over: refused there, not after all six


def test_wrong_credentials_are_our_configuration_not_the_callers_fault(pacs_server):
    wrong = Pacs(pacs_server.url, PacsCredentials(pacs_server.credentials.username, "not-the-password"))
    with pytest.raises(ServiceUnavailable) as refused:
        wrong.search_studies()
    assert refused.value.code == "pacs_credentials" and refused.value.http_status == 503
    assert "PACS refused our credentials" in refused.value.message
    assert "not-the-password" not in refused.value.message


def test_a_pacs_that_is_not_there_is_a_503_naming_it():
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(ServiceUnavailable) as down:
        Pacs(url, PacsCredentials("u", "p"), connect_timeout_s=1).search_studies()
    assert down.value.code == "pacs_unavailable" and url in down.value.message


def test_the_pacs_killed_mid_fetch_is_a_503_not_half_a_series(pacs, pacs_restarted):
    series = ct_series(40, 512, patient_id="P-KILLED", seed=1)  # 20 MB: more than the sockets buffer
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    pacs.store(series, study)
    seen = []

    def kill_after_the_first(received: int, expected: int) -> None:
        seen.append(received)
        if received == 1:
            pacs_restarted.kill()

    with pytest.raises(ServiceUnavailable) as cut:
        pacs.fetch_series(study, series_uid, max_bytes=10**9, on_instance=kill_after_the_first)
    assert cut.value.code == "pacs_unavailable" and pacs.url in cut.value.message
    assert seen and seen[-1] < 40


def test_a_seg_stored_is_found_by_qido_referencing_its_source(pacs, stored):
    seg = seg_of(stored)
    study = stored[0].StudyInstanceUID
    assert pacs.store([seg], study) == [seg.SOPInstanceUID]
    (found,) = pacs.search_instances(study, Modality="SEG")
    assert found.SOPInstanceUID == seg.SOPInstanceUID and found.SeriesInstanceUID == seg.SeriesInstanceUID
    (blob,) = pacs.fetch_series(study, seg.SeriesInstanceUID, max_bytes=10**6)
    back = hd.seg.segread(io.BytesIO(blob))
    refs = {item.SeriesInstanceUID for item in back.ReferencedSeriesSequence}
    assert refs == {stored[0].SeriesInstanceUID}


def test_a_pacs_that_drops_what_it_is_sent_is_a_refusal_not_a_success(refusing_pacs_server):
    pacs = Pacs(refusing_pacs_server.url, refusing_pacs_server.credentials)
    series = ct_series(3, patient_id=REFUSED_PATIENT)
    pacs.store(series, series[0].StudyInstanceUID)  # CT: kept
    with pytest.raises(ServiceUnavailable) as refused:
        pacs.store([seg_of(series)], series[0].StudyInstanceUID)  # its filter drops this SEG, answering 200
    assert refused.value.code == "pacs_store_refused"
    assert pacs.search_instances(series[0].StudyInstanceUID, Modality="SEG") == []
