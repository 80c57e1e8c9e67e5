"""The model-test page for a 3-D organ of several labels (issue 19: the hippocampus): its inputs take volumes
(no dataset: datasets hold 2-D pairs), a test of two NIfTI pairs runs in the background on the real
hippocampus server (an untrained 3-D U-Net: the scores are whatever it makes, checked against the kept
evaluation), the cases table gets a Dice column per label and the summary the means per label. Back on a 2-D
organ the page is as it was."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from tests import hippodata

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT_MS = 180_000  # an untrained 3-D U-Net on a shared 2-core machine
CASES = ("hippo_a", "hippo_b")
LABELS = ("anterior", "posterior")


def test_a_3d_organ_is_tested_on_volumes_with_dice_per_label(web, browser_page, tmp_path):
    page = browser_page()
    web.sign_in(page, "doctor")
    page.goto("/model-test")
    page.get_by_label("Organ").select_option("hippocampus")
    for name in ("Images", "Label masks"):
        assert {".nii", ".nii.gz", ".zip"} <= set(page.get_by_label(name).get_attribute("accept").split(","))
    expect(page.locator("#volumes-help")).to_be_visible()
    expect(page.get_by_label("or a dataset")).to_be_hidden()

    images, labels = [], []
    for kind, (name, data) in hippodata.synthetic_files(*CASES):
        path = tmp_path / kind / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        (images if kind == "images" else labels).append(path)
    page.get_by_label("Images").set_input_files(images)
    page.get_by_label("Label masks").set_input_files(labels)
    page.get_by_role("button", name="Run the test").click()
    page.locator("#test-result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#cases-table tbody tr")).to_have_count(len(CASES))

    href = page.locator("#cases-table tbody tr a[data-action=feedback]").first.get_attribute("href")
    kept = page.request.get(f"/api/v1/evaluations/{parse_qs(urlparse(href).query)['evaluation'][0]}").json()
    assert kept["organ"] == "hippocampus" and [c["name"] for c in kept["cases"]] == list(CASES)
    headings = page.locator("#cases-table thead th")
    expect(headings.nth(1)).to_have_text("Dice (mean)")
    expect(page.locator("#cases-table thead th[data-label-dice]")).to_have_text(
        [f"Dice {label}" for label in LABELS]
    )
    for case in kept["cases"]:
        row = page.locator(f'#cases-table tbody tr[data-case="{case["name"]}"]')
        expect(row.locator('[data-field="dice"]')).to_have_text(f"{case['dice']:.3f}")
        for label in LABELS:
            expect(row.locator(f'[data-field="dice-{label}"]')).to_have_text(
                f"{case['per_label'][label]['dice']:.3f}"
            )
        overlay = row.locator("img.overlay-img")
        expect(overlay).to_have_attribute("src", case["overlay_url"])
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
    summary = page.locator("#test-summary")
    for label in LABELS:
        expect(summary).to_contain_text(f"{label}: Dice {kept['per_label'][label]['mean_dice']:.3f}")
    web.shot(page, "model-test-3d")

    # a 2-D organ again: image files and datasets, as the page has always offered them
    page.get_by_label("Organ").select_option("liver")
    assert ".png" in page.get_by_label("Images").get_attribute("accept")
    expect(page.locator("#volumes-help")).to_be_hidden()
    expect(page.get_by_label("or a dataset")).to_be_visible()
