"""The 2-D viewer in a real browser (issue 18, "The viewer"), in English and Chinese: a CT slice segmented
as DICOM is zoomed, panned, windowed with a preset and by dragging, its thresholds flipped through on the
anatomy, outlined, compared; a histology tile opens in OpenSeadragon with its nuclei counted; a result opens
again from the history; a test case's overlays open large with their legend and HD95 in mm. No page logs a
script error.

What is checked is what the person sees: the viewer's state on its root (data-zoom, data-threshold, …) and the
pixels of the stage canvas, read back from the browser."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from gateway.web.i18n import EN, ZH
from tests.studydata import liver_dicom_series
from tests.web.helpers import VIEWER_PIXEL, api_client, cells_tile, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT_MS = 120_000  # untrained models on a shared 2-core machine
WORDS = {"en": EN, "zh": ZH}

# How many stage pixels have the overlay's first (red) or second (yellow) colour.
COLOURED = """root => {
  const c = document.querySelector(root).querySelector('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let red = 0, yellow = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 200 && d[i + 1] < 90 && d[i + 2] < 90) red++;
    else if (d[i] > 200 && d[i + 1] > 170 && d[i + 2] < 90) yellow++;
  }
  return [red, yellow];
}"""


def _errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(f"console error: {m.text}"))
    # a request the browser itself dropped by leaving the page (net::ERR_ABORTED) is not a failure anyone sees
    page.on(
        "requestfailed",
        lambda r: r.failure != "net::ERR_ABORTED" and errors.append(f"failed request: {r.url} ({r.failure})"),
    )
    return errors


def _stage_box(stage) -> dict:
    """Where the stage is on the screen now: scrolled into view first, as a person would before dragging."""
    stage.scroll_into_view_if_needed()
    return stage.bounding_box()


def _signed_in(web, browser_page, lang: str, path: str):
    page = browser_page(viewport={"width": 1280, "height": 900})
    errors = _errors(page)
    web.sign_in(page, "doctor", next_path=path)
    page.goto(f"/set-language?lang={lang}&next={path}")
    return page, errors


def _segment(page, lang: str, organ: str, path, patient: str) -> None:
    w = WORDS[lang]
    page.get_by_label(w["common.organ"], exact=True).select_option(organ)
    page.get_by_label(w["segment.file"]).set_input_files(path)
    page.get_by_label(w["segment.patient_id"]).fill(patient)
    page.get_by_role("button", name=w["segment.run"], exact=True).click()
    page.locator("#result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#viewer")).to_have_attribute("data-overlay", re.compile(r"^0\.\d "), timeout=30_000)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_ct_slice_is_zoomed_panned_windowed_and_its_thresholds_compared(web, browser_page, tmp_path, lang):
    w = WORDS[lang]
    ((name, data),) = liver_dicom_series(20, 1)  # a real liver slice, as a scanner writes it (HU, L P)
    scan = tmp_path / name
    scan.write_bytes(data)
    page, errors = _signed_in(web, browser_page, lang, "/segment")
    _segment(page, lang, "liver", scan, f"P-VIEW-{lang.upper()}")
    viewer, stage = page.locator("#viewer"), page.locator("#viewer .viewer2d-stage")
    expect(page.locator("#no-preview")).to_be_hidden()
    expect(viewer).to_have_attribute("data-engine", "canvas")
    expect(viewer).to_have_attribute("data-orientation", "L P")  # the image's right edge: patient's left
    expect(viewer).to_have_attribute("data-window", "60 400")  # liver's window, as the model saw it

    # zoom: keys, wheel at the pointer, fit and one-to-one
    stage.focus()
    fit = float(viewer.get_attribute("data-zoom"))
    page.keyboard.press("+")
    expect(viewer).to_have_attribute("data-zoom", f"{fit * 1.25:.3f}")
    box = _stage_box(stage)
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3)
    page.mouse.wheel(0, -120)
    assert float(viewer.get_attribute("data-zoom")) == pytest.approx(fit * 1.25 * 1.15, abs=2e-3)
    page.get_by_role("button", name=w["viewer.actual"]).click()
    expect(viewer).to_have_attribute("data-zoom", "1.000")
    page.get_by_role("button", name=w["viewer.fit"], exact=True).click()
    expect(viewer).to_have_attribute("data-zoom", f"{fit:.3f}")

    # pan: a drag moves the image with the pointer, the arrow keys by a tenth of the stage
    scale, x0, y0 = map(float, viewer.get_attribute("data-view").split())
    box = _stage_box(stage)
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 260, box["y"] + 230, steps=4)
    page.mouse.up()
    # (the browser hands pointer moves over once a frame: wait for the last one)
    expect(viewer).to_have_attribute("data-view", f"{scale:.4f} {x0 + 60:.1f} {y0 + 30:.1f}")
    _, x1, y1 = map(float, viewer.get_attribute("data-view").split())
    assert (round(x1 - x0), round(y1 - y0)) == (60, 30)
    stage.focus()
    page.keyboard.press("ArrowLeft")
    assert float(viewer.get_attribute("data-view").split()[1]) == pytest.approx(x1 + box["width"] / 10, abs=1)
    page.keyboard.press("0")

    # window/level: the liver preset narrows the window, so soft tissue spreads over more greys
    page.locator("#viewer-opacity").fill("0")  # the image alone
    tissue = page.evaluate(VIEWER_PIXEL, [256, 300])
    page.get_by_label(w["viewer.window"], exact=True).select_option(
        label=w["viewer.preset_liver"].format(w=150, l=90)
    )
    expect(viewer).to_have_attribute("data-window", "90 150")
    assert page.evaluate(VIEWER_PIXEL, [256, 300]) != tissue
    # and dragging in window mode: right widens the window, down raises the level
    page.get_by_role("button", name=w["viewer.window_drag"]).click()
    box = _stage_box(stage)  # the click may have scrolled the page
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 340, box["y"] + 320, steps=4)
    page.mouse.up()
    expect(viewer).not_to_have_attribute("data-window", "90 150")
    level, width = map(int, viewer.get_attribute("data-window").split())
    assert width > 150 and level > 90
    page.get_by_role("button", name=w["viewer.window_drag"]).click()

    # thresholds on the anatomy: flipping changes the overlay drawn over the image, the page follows
    page.locator("#viewer-opacity").fill("100")
    page.get_by_role("button", name=w["viewer.fill"], exact=True).click()
    stage.focus()
    for _ in range(6):
        page.keyboard.press("PageUp")
    expect(viewer).to_have_attribute("data-threshold", "0.2")
    low = page.evaluate(COLOURED, "#viewer")[0]
    for _ in range(6):
        page.keyboard.press("]")
    expect(viewer).to_have_attribute("data-threshold", "0.8")
    expect(page.locator("#threshold-value")).to_have_text("0.8")
    high = page.evaluate(COLOURED, "#viewer")[0]
    assert low != high  # an untrained model's masks differ between 0.2 and 0.8
    page.get_by_label(w["segment.slider"], exact=False).fill("3")
    expect(viewer).to_have_attribute("data-threshold", "0.5")

    # outline: only the mask's rim is drawn
    filled = page.evaluate(COLOURED, "#viewer")[0]
    page.get_by_role("button", name=w["viewer.outline"], exact=True).click()
    expect(viewer).to_have_attribute("data-mode", "outline")
    outlined = page.evaluate(COLOURED, "#viewer")[0]
    assert 0 < outlined < filled or filled == 0

    # the difference between two thresholds, in the second colour, with its legend: the masks of one map
    # are nested, so the pixels at 0.5 but not at 0.8 are the difference of their areas
    areas = [int(re.findall(r"\d+", t)[-1]) for t in page.locator("#gallery figcaption").all_inner_texts()]
    page.get_by_label(w["viewer.compare"], exact=True).select_option("6")  # 0.8
    expect(viewer).to_have_attribute("data-compare", "0.8")
    band = areas[3] - areas[6]
    expect(page.locator('#viewer [data-legend="difference"]')).to_contain_text(
        re.compile(rf"[:：] ?{band}\b")
    )
    yellow = page.evaluate(COLOURED, "#viewer")[1]
    assert band > 1000 and yellow > band * scale * scale / 2  # (the untrained model's band: the whole slice)
    # the small multiples are the masks on the anatomy, not bare masks
    assert page.locator("#gallery img").count() == 7
    web.shot(page, f"viewer2d-ct-{lang}")
    assert errors == []


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_histology_tile_opens_in_deep_zoom_with_its_nuclei_counted(web, browser_page, tmp_path, lang):
    w = WORDS[lang]
    tile = cells_tile(tmp_path)
    page, errors = _signed_in(web, browser_page, lang, "/segment")
    _segment(page, lang, "cells", tile, f"P-CELLS-{lang.upper()}")
    viewer = page.locator("#viewer")
    expect(viewer).to_have_attribute("data-engine", "osd")
    expect(viewer).to_have_attribute("data-mode", "outline")  # outlines in green show on H&E
    count = page.locator('[data-field="nuclei-count"]')
    expect(count).to_have_text(re.compile(r"^\d+$"), timeout=60_000)
    expect(page.locator("#nuclei")).to_contain_text(w["nuclei.count"].format(t="0.5").rstrip(":：")[:4])
    if int(count.inner_text()) > 0:  # the histogram's bars hold every nucleus counted
        bars = page.locator("#nuclei canvas").evaluate("c => Chart.getChart(c).data.datasets[0].data")
        assert len(bars) == 16 and sum(bars) == int(count.inner_text())
    # deep zoom: the tile at its own pixels and beyond
    fit = float(viewer.get_attribute("data-zoom"))
    assert fit < 1  # a 1000² tile fitted into the stage
    page.get_by_role("button", name=w["viewer.actual"]).click()
    expect(viewer).to_have_attribute("data-zoom", "1.000", timeout=5_000)
    page.get_by_role("button", name=w["viewer.zoom_in"]).click()
    page.wait_for_function("() => Number(document.querySelector('#viewer').dataset.zoom) > 1.2")
    # flipping the threshold recounts (the page starts at the suggested threshold, which the model decides)
    start = float(viewer.get_attribute("data-threshold"))
    step, nxt = ("]", f"{start + 0.1:.1f}") if start < 0.8 else ("[", f"{start - 0.1:.1f}")
    page.locator("#viewer .viewer2d-stage").focus()
    page.keyboard.press(step)
    expect(viewer).to_have_attribute("data-threshold", nxt)
    expect(page.locator("#nuclei")).to_contain_text(nxt)
    expect(viewer).to_have_attribute("data-overlay", re.compile(rf"^{nxt} outline"), timeout=30_000)
    web.shot(page, f"viewer2d-cells-{lang}")
    assert errors == []


def test_a_result_opens_again_from_the_history_and_a_test_case_large(web, browser_page, tmp_path):
    w = WORDS["en"]
    ((name, data),) = liver_dicom_series(40, 1)
    scan = tmp_path / name
    scan.write_bytes(data)
    page, errors = _signed_in(web, browser_page, "en", "/segment")
    _segment(page, "en", "liver", scan, "P-REOPEN")
    page.goto("/history?patient_id=P-REOPEN")
    row = page.locator("#history-table tbody tr").first
    row.get_by_role("button", name=re.compile(w["history.view"])).click()
    dialog = page.locator("#result-viewer")
    expect(dialog).to_be_visible()
    reopened = page.locator("#result-viewer-viewer")
    expect(reopened).to_have_attribute("data-overlay", re.compile(r"^0\.5 fill"), timeout=30_000)
    expect(reopened).to_have_attribute("data-window", "60 400")  # the CT's values came back with it
    expect(reopened).to_have_attribute("data-orientation", "L P")
    reopened.locator(".viewer2d-stage").focus()
    page.keyboard.press("[")
    expect(reopened).to_have_attribute("data-threshold", "0.4")
    web.shot(page, "viewer2d-history")
    dialog.get_by_role("button", name=w["viewer.close"]).click()
    expect(dialog).to_be_hidden()

    # a test case with its pixel spacing: HD95 in mm, overlays large with their legend
    page.goto("/model-test")
    client = api_client(page)
    label = np.zeros((512, 512), np.uint8)
    label[200:320, 150:300] = 255
    files = [
        ("images", ("slice.dcm", data, "application/dicom")),
        ("labels", ("slice.png", png_bytes(label), "image/png")),
    ]
    r = client.post("/api/v1/evaluations", data={"organ": "liver"}, files=files)
    assert r.status_code == 201, r.text
    (case,) = r.json()["cases"]
    assert case["pixel_spacing_row_mm"] == pytest.approx(0.75)
    page.get_by_label(w["common.organ"], exact=True).select_option("liver")
    page.get_by_label(w["model_test.images"]).set_input_files(
        [{"name": "slice.dcm", "mimeType": "application/dicom", "buffer": data}]
    )
    page.get_by_label(w["model_test.labels"]).set_input_files(
        [{"name": "slice.png", "mimeType": "image/png", "buffer": png_bytes(label)}]
    )
    page.get_by_role("button", name=w["model_test.run"]).click()
    hd95 = page.locator('#cases-table [data-field="hd95"]').first
    expect(hd95).to_have_text(re.compile(r"^(\d+\.\d mm|—)$"), timeout=RESULT_TIMEOUT_MS)
    page.locator('#cases-table [data-action="overlay"]').first.click()
    overlay = page.locator("#overlay-viewer-viewer")
    expect(overlay).to_have_attribute("data-engine", "canvas", timeout=30_000)
    expect(overlay.locator("[data-legend]")).to_have_count(5)
    expect(overlay.locator('[data-legend="fn"]')).to_have_text(w["model_test.legend_fn"])
    width = Image.open(io.BytesIO(client.get(case["overlay_url"]).content)).width
    assert width >= 4 * 512  # a 512² slice's four panels at their own size
    before = float(overlay.get_attribute("data-zoom"))
    overlay.locator(".viewer2d-stage").focus()
    page.keyboard.press("+")
    assert float(overlay.get_attribute("data-zoom")) == pytest.approx(before * 1.25, abs=2e-3)
    web.shot(page, "viewer2d-model-test")
    assert errors == []
