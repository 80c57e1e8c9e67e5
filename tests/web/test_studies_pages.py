"""The studies pages in Chromium (issue 17 item 6, issue 18's viewer for volumes): a doctor uploads a NIfTI
built from consecutive liver training slices (every fourth row and column, tests/studydata.py) on /studies,
follows the job's progress, and works the volume viewer (NiiVue, WebGL2): slice scroll with the slice number,
threshold flip-through with the volume in mL, window presets and drag, axial/coronal/sagittal, zoom and pan,
the difference of two thresholds, outline mode, saving the threshold; in English and Chinese, with no script
error, console error or failed request. The organ server is the web stack's liver TorchServe (an untrained
U-Net: these tests check the pages and their plumbing, not the model; tests/studies checks the masks against
the labels)."""

from __future__ import annotations

import contextlib
import gzip
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.data import SHARED_DATA
from tests.studydata import liver_nifti
from tests.web.helpers import (
    BROKEN_VALUES,
    LAYOUT_PROBLEMS,
    Settle,
    api_client,
    dicom_ct,
    disc_image,
    png_bytes,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICES = 12
SIZE = 128  # the volume's columns and rows: every fourth one of the 512² slices (tests/studydata.py)
READY = "#study-page[data-viewer='ready']"
MASK_TIMEOUT = 60_000  # a mask is derived from the probabilities on request: seconds on a busy 2-core machine


VENDOR = Path(__file__).resolve().parents[2] / "gateway" / "web" / "static" / "vendor"


@pytest.fixture(scope="module", autouse=True)
def viewer_assets():
    """NiiVue and Chart.js are built into the pages by `make assets` (npm), as Bootstrap is."""
    for name in (
        "niivue/niivue.umd.js",
        "chartjs/chart.umd.min.js",
        "chartjs/chartjs-adapter-date-fns.bundle.min.js",
    ):
        if not (VENDOR / name).is_file():
            pytest.fail(f"gateway/web/static/vendor/{name} is missing: run `make assets`")


@pytest.fixture(scope="module")
def nifti_bytes() -> bytes:
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (the liver training slices)")
    return liver_nifti(40, SLICES, in_plane_step=512 // SIZE)


class PageWatch:
    """Console errors, uncaught script errors and failed requests of a page (4xx/5xx answers included)."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"script: {e}"))
        page.on(  # a request the page itself stopped by navigating away is not a failure
            "requestfailed",
            lambda r: (
                "ERR_ABORTED" not in (r.failure or "")
                and self.problems.append(f"failed: {r.method} {r.url} {r.failure}")
            ),
        )
        page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.request.method} {r.url}"),
        )


def _doctor_page(web, browser_page, lang: str, next_path: str, **options):
    """A doctor's page in `lang` at `next_path`, and its watch for errors."""
    page = browser_page(**options)
    watch = PageWatch(page)
    web.sign_in(page, "doctor")
    page.goto(f"/set-language?lang={lang}&next={next_path}")
    return page, watch


def _upload(page, nifti: bytes, patient: str):
    # the organ select starts on the first organ this doctor has data for (earlier tests may have left a
    # hippocampus result): a liver volume is sent to the liver, as a doctor picks it
    page.locator("#organ").select_option("liver")
    page.locator("#patient_id").fill(patient)
    page.locator("#files").set_input_files(
        files=[{"name": "liver.nii.gz", "mimeType": "application/gzip", "buffer": nifti}]
    )
    page.locator("#study-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/studies/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def _slice(page) -> tuple[int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", page.locator("#slice-info").inner_text())]
    return numbers[0], numbers[1]


def _number(text: str) -> float:
    """The number after the last colon ("only at 0.2: 12.5 mL", "仅在 0.2：12.5 毫升" → 12.5)."""
    return float(re.search(r"-?\d+(?:\.\d+)?", re.split(r"[:：]", text)[-1]).group())


def _canvas_pixels(page) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(
        Image.open(io.BytesIO(page.locator("#study-canvas").screenshot())).convert("L"), dtype=np.int16
    )


WORDS = {
    "en": {"link": "Segment a study: DICOM series or NIfTI", "coronal": "Coronal", "saved": "saved"},
    "zh": {"link": "分割整个检查：DICOM 序列或 NIfTI", "coronal": "冠状面", "saved": "已保存"},
}


def _study_in_viewer(web, browser_page, nifti_bytes, lang: str):
    """A doctor follows the link from /segment, uploads the volume and waits for the viewer: (page, its watch,
    the study's id, the study's volumes_ml of the liver per threshold)."""
    page, watch = _doctor_page(web, browser_page, lang, "/segment")
    page.get_by_role("link", name=WORDS[lang]["link"]).click()
    expect(page).to_have_url(re.compile(r"/studies$"))
    study_id = _upload(page, nifti_bytes, f"STUDY-{lang.upper()}")

    # the job's progress, then the viewer
    page.wait_for_selector(READY, timeout=240_000)
    web.shot(page, f"study-viewer-{lang}")
    expect(page.locator("#study-canvas")).to_be_visible()
    expect(page.locator("#job")).to_be_hidden()
    slice_no, count = _slice(page)
    assert count == SLICES and 1 <= slice_no <= SLICES
    study = page.request.get(f"/api/v1/studies/{study_id}").json()
    volumes = {t_: v["liver"] for t_, v in study["volumes_ml"].items()}
    assert len(set(volumes.values())) > 1, volumes  # the thresholds differ for this volume
    return page, watch, study_id, volumes


def _compare_with(page, threshold: str, volumes: dict[str, float]) -> None:
    """The difference of the threshold shown and `threshold`: the voxels only one mask holds, in two colours,
    in mL (the figures read in either language: "only at 0.2: 12.5 mL", "仅在 0.2：12.5 毫升")."""
    shown = page.locator("#threshold-value").inner_text()
    page.locator("#compare").select_option(threshold)
    legend = page.locator("#legend li")
    expect(legend).to_have_count(3, timeout=MASK_TIMEOUT)
    only_shown, only_other = (_number(legend.nth(i).inner_text()) for i in (1, 2))
    assert abs((only_other - only_shown) - (volumes[threshold] - volumes[shown])) < 0.2
    page.locator("#compare").select_option("")
    expect(legend).to_have_count(1)


def _coronal_then_save(web, page, lang: str, study_id: str) -> None:
    """Axial → coronal (the slices are now the SIZE rows of the grid); then the threshold 0.4 saved with a
    note is the study's, after a reload too."""
    t = WORDS[lang]
    page.get_by_role("button", name=t["coronal"]).click()
    expect(page.get_by_role("button", name=t["coronal"])).to_have_attribute("aria-pressed", "true")
    assert _slice(page)[1] == SIZE
    web.shot(page, f"study-viewer-coronal-{lang}")
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#threshold-value")).to_have_text("0.4", timeout=MASK_TIMEOUT)
    page.locator("#note").fill("checked on the anatomy")
    page.locator("#choice-form button[type=submit]").click()
    expect(page.locator("#choice-ok")).to_be_visible(timeout=30_000)
    assert page.request.get(f"/api/v1/studies/{study_id}").json()["chosen_threshold"] == 0.4
    page.reload()
    page.wait_for_selector(READY, timeout=60_000)
    expect(page.locator("#threshold-value")).to_have_text("0.4")
    expect(page.locator("#threshold-badge")).to_have_text(t["saved"])
    expect(page.locator("#note")).to_have_value("checked on the anatomy")


def test_a_doctor_uploads_a_nifti_study_and_works_the_viewer(web, browser_page, nifti_bytes):
    page, watch, study_id, volumes = _study_in_viewer(web, browser_page, nifti_bytes, "en")
    slice_no, _ = _slice(page)

    # slices: arrow keys and the wheel move through the volume, the number follows
    page.locator("#study-canvas").focus()
    page.keyboard.press("ArrowUp")
    assert _slice(page) == (slice_no + 1, SLICES)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert _slice(page) == (slice_no - 1, SLICES)
    box = page.locator("#study-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    before = _slice(page)[0]
    page.mouse.wheel(0, 120)
    expect(page.locator("#slice-info")).not_to_have_text(re.compile(rf"\b{before}\b /"))

    # threshold flip-through: the volume shown changes with the threshold, as the study's volumes_ml say
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("Home")
    seen = {}
    for threshold in ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]:
        if threshold != "0.2":
            page.keyboard.press("ArrowRight")
        expect(page.locator("#threshold-value")).to_have_text(threshold, timeout=MASK_TIMEOUT)
        expect(page.locator("#volume-value")).to_contain_text(f"{volumes[threshold]:.1f}")
        seen[threshold] = page.locator("#volume-value").inner_text()
    assert len(set(seen.values())) == len(set(volumes.values()))

    # window presets: the readout and the picture change
    page.locator("#wl-preset").select_option("abdomen")
    expect(page.locator("#wl-info")).to_have_text("W 400 / L 40")
    abdomen = _canvas_pixels(page)
    page.locator("#wl-preset").select_option("liver")
    expect(page.locator("#wl-info")).to_have_text("W 150 / L 90")
    liver = _canvas_pixels(page)
    assert np.abs(abdomen - liver).mean() > 1.0

    # left drag adjusts window/level (the preset becomes "custom"); a double click goes back to the preset
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2 - 50, steps=3)
    page.mouse.up()
    expect(page.locator("#wl-info")).not_to_have_text("W 150 / L 90")
    expect(page.locator("#wl-preset")).to_have_value("custom")
    page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(page.locator("#wl-info")).to_have_text("W 150 / L 90")
    expect(page.locator("#wl-preset")).to_have_value("liver")

    # zoom (buttons, keys, Ctrl + wheel) and pan (Shift + arrows), and back to fit
    fitted = _canvas_pixels(page)
    page.locator("#zoom-in").click()
    expect(page.locator("#zoom-info")).to_contain_text("125")
    page.locator("#study-canvas").focus()
    page.keyboard.press("+")
    expect(page.locator("#zoom-info")).to_contain_text("156")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -120)
    page.keyboard.up("Control")
    expect(page.locator("#zoom-info")).to_contain_text("195")
    zoomed = _canvas_pixels(page)
    page.locator("#study-canvas").focus()
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    panned = _canvas_pixels(page)
    assert np.abs(zoomed - fitted).mean() > 1.0 and np.abs(panned - zoomed).mean() > 1.0
    page.locator("#zoom-fit").click()
    expect(page.locator("#zoom-info")).to_contain_text("100")
    assert np.abs(_canvas_pixels(page) - fitted).mean() < 1.0

    # the difference of two thresholds: the voxels only one mask holds, in two colours, in mL
    _compare_with(page, "0.2", volumes)

    # outline only: the same mask, drawn as its edge (at the threshold with the largest volume)
    largest = max(volumes, key=volumes.get)
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"].index(largest)):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#threshold-value")).to_have_text(largest)
    filled = _canvas_pixels(page)
    page.locator("#outline").check()
    assert np.abs(_canvas_pixels(page) - filled).mean() > 0.2
    page.locator("#outline").uncheck()

    _coronal_then_save(web, page, "en", study_id)
    assert watch.problems == []


def test_the_study_viewer_in_chinese(web, browser_page, nifti_bytes):
    """The same page in Chinese, its words and figures: the link to it, a threshold step with its volume, the
    difference legend's figures read after a full-width colon, the coronal button, the saved badge (the
    interactions themselves are language-free and are worked through in English above)."""
    page, watch, study_id, volumes = _study_in_viewer(web, browser_page, nifti_bytes, "zh")
    shown = page.locator("#threshold-value").inner_text()
    expect(page.locator("#volume-value")).to_contain_text(f"{volumes[shown]:.1f} 毫升")
    _compare_with(page, "0.2" if shown != "0.2" else "0.8", volumes)
    _coronal_then_save(web, page, "zh", study_id)
    assert watch.problems == []


def _finished(api, study_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = api.get(f"/api/v1/studies/{study_id}").json()
        if study["status"] in ("done", "failed"):
            return study
        time.sleep(0.5)
    raise AssertionError(f"study {study_id} still {study['status']} after {timeout} s")


@pytest.fixture(scope="module")
def trend_patient(web, chromium, nifti_bytes) -> dict:
    """A patient followed in both units: two finished studies (dates 2024-03-01 and 2024-06-01, the second
    with its threshold saved at 0.4) and two saved 2-D images, a PNG (area in px) and a DICOM slice that
    carries its pixel spacing (area in mm²)."""
    context = chromium.new_context(base_url=web.base_url)
    page = context.new_page()
    web.sign_in(page, "doctor", next_path="/profile")
    patient, made = "TREND-0001", {}
    small = liver_nifti(60, 4)
    with api_client(page) as api:
        for study_date in ("2024-03-01", "2024-06-01"):
            files = {"files": ("liver.nii.gz", small, "application/gzip")}
            sent = api.post("/api/v1/studies", data={"organ": "liver", "patient_id": patient,
                            "study_date": study_date}, files=files)  # fmt: skip
            assert sent.status_code == 202, sent.text
            made[study_date] = _finished(api, sent.json()["id"])
            assert made[study_date]["status"] == "done", made[study_date]
        chose = api.post(f"/api/v1/studies/{made['2024-06-01']['id']}/choice", json={"threshold": 0.4})
        assert chose.is_success, chose.text
        for name, data, kind in (("slice.png", png_bytes(disc_image(64)), "image/png"),
                                 ("slice.dcm", dicom_ct(64), "application/dicom")):  # fmt: skip
            seg = api.post("/api/v1/segment", data={"organ": "liver", "patient_id": patient},
                           files={"file": (name, data, kind)})  # fmt: skip
            assert seg.status_code == 200, seg.text
            assert api.post(
                f"/api/v1/segmentations/{seg.json()['id']}/choice", json={"threshold": 0.5}
            ).is_success
        trend = api.get(f"/api/v1/patients/{patient}/trend").json()
    context.close()
    return {"patient": patient, "studies": made, "trend": trend}


CHART = """() => {
  const chart = Chart.getChart(document.getElementById("trend-chart"));
  const axes = Object.fromEntries(Object.entries(chart.scales).map(([id, s]) => [id, {
    type: s.type, title: s.options.title.text, ticks: s.ticks.map(t => String(t.label))}]));
  return {axes, datasets: chart.data.datasets.map(d => ({label: d.label, axis: d.yAxisID,
    points: d.data.map(p => ({x: p.x, y: p.y, study: p.study ? p.study.study_id : null}))}))};
}"""


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_history_trend_has_real_dates_and_one_unit_per_axis(web, browser_page, trend_patient, lang):
    page, watch = _doctor_page(web, browser_page, lang, f"/history?patient_id={trend_patient['patient']}")
    page.wait_for_selector("#trend-chart")
    web.shot(page, f"history-trend-{lang}")
    drawn = page.evaluate(CHART)
    words = {
        "en": {"ml": "(mL)", "mm2": "(mm²)", "px": "(px)"},
        "zh": {"ml": "（毫升）", "mm2": "（平方毫米）", "px": "（像素）"},
    }
    axes, lines = drawn["axes"], {d["axis"]: d for d in drawn["datasets"]}
    # one unit per line and per axis: mL (studies), mm² and px (2-D images), never on one line
    assert sorted(lines) == ["ml", "mm2", "px"] and len(drawn["datasets"]) == 3
    for unit in ("ml", "mm2", "px"):
        assert words[lang][unit] in axes[unit]["title"] and words[lang][unit] in lines[unit]["label"]
    # real dates on a time axis: the studies at their study dates (not "0.0 days")
    assert axes["x"]["type"] == "time"
    assert any(re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", t) for t in axes["x"]["ticks"]), axes["x"]["ticks"]
    assert "days" not in page.locator("#trend").inner_text()
    studies = {s["study_date"]: s for s in trend_patient["trend"]["studies"]}
    shown = lines["ml"]["points"]
    assert [time.strftime("%Y-%m-%d", time.localtime(p["x"] / 1000)) for p in shown] == [
        "2024-03-01",
        "2024-06-01",
    ]
    # each study at its saved threshold, else the default: the mL the trend API gives
    assert [p["y"] for p in shown] == [
        studies[d]["volumes_ml"]["liver"] for d in ("2024-03-01", "2024-06-01")
    ]
    assert studies["2024-06-01"]["threshold"] == 0.4 and studies["2024-06-01"]["chosen"]
    assert len(lines["mm2"]["points"]) == 1 and len(lines["px"]["points"]) == 1
    # the studies are listed under the chart, each reopening in the viewer
    listed = page.locator("#trend-studies li")
    expect(listed).to_have_count(2)
    listed.nth(1).get_by_role("link").click()
    expect(page).to_have_url(re.compile(trend_patient["studies"]["2024-06-01"]["id"] + "$"))
    page.wait_for_selector(READY, timeout=60_000)
    expect(page.locator("#threshold-value")).to_have_text("0.4", timeout=MASK_TIMEOUT)
    assert watch.problems == []


@contextlib.contextmanager
def _workers_held(web):
    """No study worker runs while the block does (as when the pool is busy): a new study stays queued."""
    jobs = web.app.state.clinic.studies
    settings = jobs.settings
    jobs.close()
    jobs.settings = settings.model_copy(update={"study_workers": 0})
    try:
        yield
    finally:
        jobs.settings = settings
        jobs.start()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_queued_study_shows_its_progress_and_can_be_cancelled(web, browser_page, lang):
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (the liver training slices)")
    page, watch = _doctor_page(web, browser_page, lang, "/studies")
    words = {
        "en": ("Queued", "Cancel", "The study was cancelled."),
        "zh": ("排队中", "取消", "该检查已取消。"),
    }[lang]
    with _workers_held(web):
        study_id = _upload(page, liver_nifti(60, 4), f"QUEUED-{lang.upper()}")
        expect(page.locator("#job")).to_be_visible()
        expect(page.locator("#job-status")).to_have_text(words[0])
        expect(page.locator("#job-bar")).to_have_attribute("aria-valuenow", "0")
        web.shot(page, f"study-queued-{lang}")
        page.get_by_role("button", name=words[1]).click()
        expect(page.locator("#failed-text")).to_have_text(words[2])
        expect(page.locator("#job")).to_be_hidden()
    assert page.request.get(f"/api/v1/studies/{study_id}").json()["error"]["code"] == "cancelled"
    page.goto("/studies")  # the list says cancelled, not failed
    row = page.locator("#studies-table tbody tr", has_text=f"QUEUED-{lang.upper()}")
    expect(row.locator('[data-field="status"]')).to_have_text({"en": "Cancelled", "zh": "已取消"}[lang])

    # the ETA comes from the progress rate, once the progress has moved twice
    eta = page.evaluate(
        """() => {
          const e = new MedSegStudy.Eta(), out = [];
          e.add(0, 0); out.push(e.text(0));
          e.add(0.1, 1000); out.push(e.text(1000));
          e.add(0.3, 3000); out.push(e.text(3000));
          const slow = new MedSegStudy.Eta();
          slow.add(0.05, 0); slow.add(0.15, 10000); out.push(slow.text(10000));
          return out;
        }"""
    )
    expected = {
        "en": [
            "estimating the time left…",
            "estimating the time left…",
            "about 7 s left",
            "about 1 min 25 s left",
        ],
        "zh": ["正在估算剩余时间…", "正在估算剩余时间…", "约剩 7 秒", "约剩 1 分 25 秒"],
    }[lang]
    assert eta == expected
    assert watch.problems == []


def _nan_nifti() -> bytes:
    data = np.zeros((16, 16, 4), np.float32)
    data[3, 3, 1] = np.nan
    return gzip.compress(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes())


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_refused_upload_is_worded_by_its_error_code(web, browser_page, lang):
    page, _ = _doctor_page(web, browser_page, lang, "/studies")
    page.locator("#files").set_input_files(
        files=[{"name": "broken.nii.gz", "mimeType": "application/gzip", "buffer": _nan_nifti()}]
    )
    page.locator("#study-form button[type=submit]").click()
    expected = {"en": "holds values that are not numbers", "zh": "含有非数值"}[lang]
    expect(page.locator("#study-error")).to_contain_text(expected)
    expect(page).to_have_url(re.compile(r"/studies$"))  # no study was made
    expect(page.locator("#upload-progress")).to_be_hidden()


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_study_pages_read_well_on_a_laptop_and_a_phone(web, browser_page, trend_patient, lang, width):
    viewport = {"width": width, "height": 800 if width > 500 else 844}
    page, watch = _doctor_page(web, browser_page, lang, "/studies", viewport=viewport, has_touch=width < 768)
    settle = Settle(page)
    study_id = trend_patient["studies"]["2024-06-01"]["id"]
    for path in ("/studies", f"/studies/{study_id}"):
        page.goto(path)
        if path == "/studies":
            expect(page.locator(f"#studies-table tr[data-study-id='{study_id}']")).to_be_visible()
        else:
            page.wait_for_selector(READY, timeout=60_000)
        settle()
        web.shot(page, f"studies-{lang}-{width}{path.replace('/', '-')[:18]}")
        assert re.findall(BROKEN_VALUES, page.locator("body").inner_text()) == [], path
        assert page.evaluate(LAYOUT_PROBLEMS, "body") == [], path
    assert watch.problems == []


def test_a_dicom_series_folder_opens_in_the_viewer_with_its_dicom_seg(web, browser_page, tmp_path):
    """A folder as a scanner's export leaves it (the series' files and a hidden file the page leaves out): the
    series' own patient ID and study date are shown, and the DICOM SEG downloads at the threshold shown."""
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (the liver training slices)")
    import io

    import pydicom

    from tests.studydata import PATIENT_ID, liver_dicom_series

    folder = tmp_path / "series"
    folder.mkdir()
    for name, data in liver_dicom_series(80, 4, reverse=True):
        (folder / name).write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    page = browser_page()
    watch = PageWatch(page)
    web.sign_in(page, "doctor")
    page.goto("/studies")
    page.locator("#organ").select_option("liver")
    page.locator("#folder").set_input_files(folder)
    expect(page.locator("#chosen")).to_contain_text("4 files")
    page.locator("#study-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/studies/[0-9a-f-]{36}$"))
    page.wait_for_selector(READY, timeout=240_000)
    expect(page.locator("#study-heading")).to_contain_text(PATIENT_ID)
    expect(page.locator("#study-heading")).to_contain_text("2024-03-01")
    expect(page.locator("#study-meta")).to_contain_text("DICOM series")
    seg_link = page.locator("#download-seg")
    expect(seg_link).to_be_visible()
    shown = page.locator("#threshold-value").inner_text()
    assert seg_link.get_attribute("href").endswith(f"/seg.dcm?threshold={shown}")
    answer = page.request.get(seg_link.get_attribute("href"))
    assert answer.ok and answer.headers["content-type"] == "application/dicom"
    seg = pydicom.dcmread(io.BytesIO(answer.body()))
    assert seg.Modality == "SEG" and seg.PatientID == PATIENT_ID
    assert watch.problems == []


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_hippocampus_mri_opens_with_a_colour_and_ml_per_label(web, browser_page, lang):
    """Issue 19: the 3-D two-label organ on /studies (the web stack's hippocampus server, an untrained 3-D
    U-Net): the legend lists both labels in their colours with each one's mL at the threshold shown, and it
    follows the threshold; the 2-D segment page does not offer the organ. In Chinese the organ and its labels
    are named by the words its spec carries (services/hippocampus/spec.yaml `translations`)."""
    from tests import hippodata

    if not hippodata.HIPPO.is_dir():
        pytest.skip("needs ../shared/data/hippocampus3d")
    page, watch = _doctor_page(web, browser_page, lang, "/segment")
    assert page.locator("#organ option[value='hippocampus']").count() == 0
    page.goto("/studies")
    page.locator("#organ").select_option("hippocampus")
    page.locator("#files").set_input_files(
        files=[{"name": "h.nii.gz", "mimeType": "application/gzip", "buffer": hippodata.nifti_bytes()}]
    )
    page.locator("#study-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/studies/[0-9a-f-]{36}$"))
    study_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(READY, timeout=240_000)
    web.shot(page, f"study-viewer-hippocampus-{lang}")
    names = {
        "en": {"anterior": "anterior", "posterior": "posterior"},
        "zh": {"anterior": "前部", "posterior": "后部"},
    }
    if lang == "zh":
        expect(page.locator("body")).to_contain_text("海马体（脑部 MRI）")
    study = page.request.get(f"/api/v1/studies/{study_id}").json()
    assert study["labels"] == ["anterior", "posterior"]
    slider = page.locator("#threshold")
    slider.focus()
    page.keyboard.press("Home")
    for threshold in ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]:
        if threshold != "0.2":
            page.keyboard.press("ArrowRight")
        expect(page.locator("#threshold-value")).to_have_text(threshold, timeout=MASK_TIMEOUT)
        for label in study["labels"]:
            item = page.locator(f"#legend li[data-legend='{label}']")
            expect(item).to_contain_text(names[lang][label])
            expect(item).to_contain_text(f"{study['volumes_ml'][threshold][label]:.1f}")
    swatches = page.locator("#legend li[data-legend] span").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert len(set(swatches)) == 2, swatches  # a colour per label
    assert watch.problems == []
