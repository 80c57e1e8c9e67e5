"""A cells tile's wait on the segment page (issue 16.5), in a real browser, in English and Chinese: the page
shows the upload's progress, then the seconds so far or, once this gateway has segmented the organ, the time
left against what its recent segmentations took (the figure the gateway measured, given to the page), never
a bare "Segmenting…"; the progress goes away with the answer.

Every text the progress line shows is recorded in the page (a MutationObserver) and checked after the answer,
so the test holds however fast the organ server answers."""

from __future__ import annotations

import json
import math
import re

import pytest

from gateway.web.i18n import EN, ZH
from tests.web.helpers import cells_tile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT_MS = 120_000  # a 1000² tile and its mirror images on a shared 2-core machine
WORDS = {"en": EN, "zh": ZH}
NUMBER = r"\d+(?:\.\d+)?"

RECORD = """() => {
  window.__progress = [];
  const text = document.querySelector('#segment-progress [data-field="progress-text"]');
  new MutationObserver(() => window.__progress.push(text.textContent))
    .observe(text, { childList: true, characterData: true, subtree: true });
}"""


def pattern(message: str, **fixed: str) -> re.Pattern:
    """A catalogue message as a regex: its {placeholders} as numbers, or as the `fixed` text given."""
    parts = re.split(r"\{(\w+)\}", message)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        else:
            out.append(re.escape(fixed[part]) if part in fixed else NUMBER)
    return re.compile("^" + "".join(out) + "$")


def _expected_s(page) -> float | None:
    return json.loads(page.locator("#result").get_attribute("data-organs"))["cells"]["expected_s"]


def _segment_recording(page, lang: str, tile, patient: str) -> list[str]:
    w = WORDS[lang]
    page.get_by_label(w["common.organ"], exact=True).select_option("cells")
    page.get_by_label(w["segment.file"]).set_input_files(tile)
    page.get_by_label(w["segment.patient_id"]).fill(patient)
    page.evaluate(RECORD)
    page.get_by_role("button", name=w["segment.run"], exact=True).click()
    page.locator("#result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert page.locator("#segment-progress").is_hidden()  # gone with the answer
    return page.evaluate("() => window.__progress")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_cells_tile_shows_its_upload_then_the_time_against_recent_ones(web, browser_page, tmp_path, lang):
    w = WORDS[lang]
    tile = cells_tile(tmp_path)
    page = browser_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    web.sign_in(page, "doctor", next_path="/segment")
    page.goto(f"/set-language?lang={lang}&next=/segment")
    organ = page.locator("#organ option[value=cells]").inner_text().strip()
    uploading = pattern(w["segment.uploading"])
    elapsed = pattern(w["segment.elapsed"])

    def timed(expected: float) -> tuple[re.Pattern, ...]:
        # the page shows it to 0.1 s (JavaScript's toFixed rounds an exact half up, Python's format to even)
        shown = {f"{expected:.1f}", f"{math.floor(expected * 10 + 0.5) / 10:.1f}"}
        return tuple(
            pattern(w[key], **({"organ": organ} if key == "segment.eta" else {}), expected=s)
            for s in shown
            for key in ("segment.eta", "segment.overdue")
        )

    before = _expected_s(page)  # None unless an earlier test segmented a tile on this gateway
    texts = _segment_recording(page, lang, tile, f"P-PROG-{lang.upper()}")
    assert texts and uploading.match(texts[0]), texts
    waiting = [t for t in texts if not uploading.match(t)]
    assert waiting, texts  # past the upload, the wait is shown
    allowed = (elapsed,) if before is None else timed(before)
    assert all(any(p.match(t) for p in allowed) for t in waiting), (before, texts)
    assert w["segment.running"] not in texts

    # the gateway measured that one: a page opened now expects what its recent ones took, and counts down
    page.goto("/segment")
    measured = _expected_s(page)
    assert isinstance(measured, float) and measured > 0
    texts = _segment_recording(page, lang, tile, f"P-PROG-{lang.upper()}")
    waiting = [t for t in texts if not uploading.match(t)]
    assert waiting and all(any(p.match(t) for p in timed(measured)) for t in waiting), (measured, texts)
    web.shot(page, f"segment-progress-{lang}")
    assert errors == []
