""" "Open from PACS" in Chromium (issue 21 item 3), against the real Orthanc of the PACS tests
(tests/fixtures/pacs.py): from the segment page's link, a doctor searches the PACS by patient ID and modality,
picks the study and its CT series (its middle image shown as a thumbnail), segments it with "Store result in
PACS", follows the job into the viewer, sees the SEG stored back (and found in Orthanc by QIDO, referencing
the series), and saves another threshold, which stores a second SEG; in English and Chinese, with no script
error, console error or failed request. The PACS killed mid-way: the page says, in its language, that the
hospital's PACS is not answering. The series is the liver training slices as CT, every second row and column
(tests/studydata.py), and the organ server an untrained U-Net: this checks the pages and their plumbing
(tests/studies checks the SEG)."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect
from pydantic import SecretStr
from pydicom.uid import generate_uid

from tests import studydata
from tests.data import SHARED_DATA
from tests.fixtures.pacs import pacs_settings_for
from tests.web.helpers import serving
from tests.web.test_studies_pages import READY, PageWatch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICES = 8
PACS_TIMEOUT = 30_000  # a QIDO-RS / WADO-RS round trip through the gateway on a busy 2-core machine
WORDS = {
    "en": {
        "link": "Open a study from the hospital's PACS",
        "search": "Search the PACS",
        "choose": "Choose",
        "pick": "Pick this series",
        "store": "Store result in PACS",
        "segment": "Segment this series",
        "stored": "DICOM SEG at threshold",
        "down": "The hospital's PACS is not answering. Try again in a moment.",
        "none": "The PACS holds no study matching this search.",
    },
    "zh": {
        "link": "从医院 PACS 打开检查",
        "search": "检索 PACS",
        "choose": "选择",
        "pick": "选择此序列",
        "store": "将结果存入 PACS",
        "segment": "分割此序列",
        "stored": "的 DICOM SEG",
        "down": "医院 PACS 暂时没有响应，请稍后重试。",
        "none": "PACS 中没有符合条件的检查。",
    },
}


@pytest.fixture(scope="module")
def pacs_web(web, request):
    """The web gateway's database and organ servers, with the session's Orthanc as its PACS (a second app:
    the shared one's PACS is not configured)."""
    from gateway.main import create_app

    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (the liver training slices)")
    pacs = pacs_settings_for(request)
    pacs["pacs_patient_key"] = SecretStr(pacs["pacs_patient_key"])  # model_copy does not validate
    settings = web.settings.model_copy(update=pacs)
    app = create_app(settings, request.getfixturevalue("stack_dataplane"))
    with serving(app, web.engine, settings, name="pacs-web-gateway") as url:
        yield url, app.state.clinic.pacs.pacs


def _stored_series(pacs, patient_id: str) -> list:
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "patient_id": patient_id}
    # 256² slices: headless Chromium's software WebGL redraws them faster than 512² ones
    datasets = studydata.liver_dicom_datasets(20, SLICES, in_plane_step=2, **uids)
    pacs.store(datasets, datasets[0].StudyInstanceUID)
    return datasets


def _doctor(web, browser_page, base_url: str, lang: str, next_path: str):
    page = browser_page(base_url=base_url)
    watch = PageWatch(page)
    web.sign_in(page, "doctor")
    page.goto(f"/set-language?lang={lang}&next={next_path}")
    return page, watch


def _search(page, words, patient_id: str):
    page.locator("#pacs-patient").fill(patient_id)
    page.locator("#pacs-modality").select_option("CT")
    page.get_by_role("button", name=words["search"]).click()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_doctor_opens_a_series_from_the_pacs_segments_it_and_stores_the_seg(
    web, browser_page, pacs_web, lang
):
    base_url, pacs = pacs_web
    words = WORDS[lang]
    patient = f"P-WEB-{lang.upper()}-{uuid.uuid4().hex[:6]}"
    series = _stored_series(pacs, patient)
    study_uid, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID

    page, watch = _doctor(web, browser_page, base_url, lang, "/segment")
    page.get_by_role("link", name=words["link"]).click()
    expect(page).to_have_url(re.compile(r"/studies#pacs$"))
    expect(page.locator("#pacs")).to_be_visible()

    _search(page, words, "P-NOBODY-" + uuid.uuid4().hex[:6])
    expect(page.locator("#pacs-studies tbody")).to_have_text(words["none"], timeout=PACS_TIMEOUT)
    _search(page, words, patient)
    row = page.locator(f'#pacs-studies tr[data-study-uid="{study_uid}"]')
    expect(row).to_contain_text(patient, timeout=PACS_TIMEOUT)  # a pseudonymous ID already: kept as it is
    expect(row).to_contain_text("CT")
    row.get_by_role("button", name=words["choose"]).click()

    series_row = page.locator(f'#pacs-series tr[data-series-uid="{series_uid}"]')
    expect(series_row).to_contain_text(str(SLICES), timeout=PACS_TIMEOUT)
    thumbnail = series_row.locator("img.pacs-thumbnail")
    expect(thumbnail).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    web.shot(page, f"pacs-picker-{lang}")
    series_row.get_by_role("button", name=words["pick"]).click()
    expect(page.get_by_label(words["store"])).to_be_checked()
    page.locator("#pacs-organ").select_option("liver")
    page.get_by_role("button", name=words["segment"]).click()

    page.wait_for_url(re.compile(r"/studies/[0-9a-f-]{36}$"), timeout=120_000)
    study_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(READY, timeout=240_000)
    stored = page.locator("#pacs-stored li")
    expect(stored).to_have_count(1, timeout=60_000)
    expect(stored.first).to_contain_text(words["stored"])
    expect(page.locator("#pacs-source")).to_contain_text(series_uid)
    web.shot(page, f"pacs-study-{lang}")

    study = page.request.get(f"/api/v1/studies/{study_id}").json()
    assert study["pacs"]["study_uid"] == study_uid and study["pacs"]["store_result"] is True
    assert study["patient_id"] == patient
    (first,) = study["pacs"]["stored"]
    segs = pacs.search_instances(study_uid, Modality="SEG")
    assert [str(s.SeriesInstanceUID) for s in segs] == [first["series_uid"]]

    # saving another threshold stores a second SEG, a new series
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("End")
    expect(page.locator("#threshold-value")).to_have_text("0.8", timeout=60_000)
    page.locator("#choice-form button[type=submit]").click()
    expect(page.locator("#choice-ok")).to_be_visible(timeout=60_000)
    expect(stored).to_have_count(2, timeout=60_000)
    expect(stored.nth(1)).to_contain_text("0.8")
    assert len(pacs.search_instances(study_uid, Modality="SEG")) == 2
    assert watch.problems == []


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_pacs_down_is_said_on_the_page(web, browser_page, pacs_web, pacs_server, pacs_restarted, lang):
    base_url, pacs = pacs_web
    words = WORDS[lang]
    patient = f"P-DOWN-{lang.upper()}-{uuid.uuid4().hex[:6]}"
    study_uid = _stored_series(pacs, patient)[0].StudyInstanceUID
    page, watch = _doctor(web, browser_page, base_url, lang, "/studies#pacs")
    _search(page, words, patient)
    row = page.locator(f'#pacs-studies tr[data-study-uid="{study_uid}"]')
    expect(row).to_be_visible(timeout=PACS_TIMEOUT)

    pacs_server.kill()  # the hospital's archive goes away between the search and the pick
    row.get_by_role("button", name=words["choose"]).click()
    expect(page.locator("#pacs-error")).to_have_text(words["down"], timeout=PACS_TIMEOUT)
    _search(page, words, patient)
    expect(page.locator("#pacs-error")).to_have_text(words["down"], timeout=PACS_TIMEOUT)
    expect(page.locator("#pacs-results")).to_be_hidden()
    web.shot(page, f"pacs-down-{lang}")
    expected = re.compile(r"^503: GET .*/api/v1/pacs/studies|^console: Failed to load resource: .* 503 ")
    refused = [p for p in watch.problems if not expected.match(p)]  # the PACS's 503s, and nothing else
    assert refused == [] and len(watch.problems) >= 2, watch.problems
