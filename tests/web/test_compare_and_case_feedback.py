"""The model-test page's paired comparison of two tests on the same cases (per-image Dice of A and B, the
better one, wins/losses/ties, mean difference, both overlays side by side), and feedback on one case: from a
row of a test's per-image table and from a saved segmentation in the history, the feedback form opens filled
in with the model version and the case."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from playwright.sync_api import expect

from gateway.service.evaluations import TIE
from tests.web.helpers import disc_image, disc_label, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_TIMEOUT_MS = 120_000  # untrained models on a shared 2-core machine
CASES = ("case0.png", "case1.png")


def _run_test(page, tmp_path, labels: dict[str, np.ndarray]) -> str:
    """Upload the cases with `labels` on the model-test page; the stored evaluation's id."""
    images, masks = [], []
    for i, name in enumerate(CASES):
        images.append(tmp_path / name)
        images[-1].write_bytes(png_bytes(disc_image(64, seed=i)))
        masks.append(tmp_path / name.replace(".png", "_mask.png"))
        masks[-1].write_bytes(png_bytes(labels[name]))
    page.get_by_label("Images").set_input_files(images)
    page.get_by_label("Label masks").set_input_files(masks)
    page.evaluate("document.getElementById('test-result').classList.add('d-none')")
    seen = []  # the page tests in the background: 202 and a job it follows, no request held open (issue 23)
    page.on("response", lambda r: seen.append((r.request.method, urlparse(r.url).path, r.status)))
    page.get_by_role("button", name="Run the test").click()
    page.locator("#test-result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert ("POST", "/api/v1/evaluations", 202) in seen, seen
    assert any(m == "GET" and p.startswith("/api/v1/evaluation-jobs/") and s == 200 for m, p, s in seen), seen
    # the page then refreshes the stored tests the comparison offers; the button is busy until it has
    expect(page.get_by_role("button", name="Run the test")).to_be_enabled(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#cases-table tbody tr")).to_have_count(len(CASES))
    href = page.locator("#cases-table tbody tr a[data-action=feedback]").first.get_attribute("href")
    return parse_qs(urlparse(href).query)["evaluation"][0]


def test_two_tests_are_compared_side_by_side_and_a_case_gets_feedback(web, browser_page, tmp_path):
    page = browser_page()
    web.sign_in(page, "doctor")
    page.goto("/model-test")
    page.get_by_label("Organ").select_option("liver")
    # B's label for case1 covers a different area (half the image), so that image's Dice differs
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    first = _run_test(page, tmp_path, {"case0.png": disc_label(64), "case1.png": disc_label(64)})
    second = _run_test(page, tmp_path, {"case0.png": disc_label(64), "case1.png": half})
    assert first != second

    page.get_by_label("Test A").select_option(first)
    page.get_by_label("Test B").select_option(second)
    page.get_by_role("button", name="Compare").click()
    page.locator("#compare-result").wait_for(state="visible")

    detail = {e: page.request.get(f"/api/v1/evaluations/{e}").json() for e in (first, second)}
    dice = {e: {c["name"]: c["dice"] for c in detail[e]["cases"]} for e in (first, second)}
    names = sorted(dice[first])  # the cases as the evaluation names them (matched across tests by name)
    assert len(names) == len(CASES) and sorted(dice[second]) == names
    case1 = next(n for n in names if n.startswith("case1"))
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(len(CASES))
    outcomes = {"win": 0, "loss": 0, "tie": 0}
    differences = []
    for name in names:
        row = page.locator(f'#compare-table tbody tr[data-case="{name}"]')
        a, b = dice[first][name], dice[second][name]
        assert row.locator('[data-field="dice_a"]').inner_text() == f"{a:.3f}"
        assert row.locator('[data-field="dice_b"]').inner_text() == f"{b:.3f}"
        outcome = "win" if a - b > TIE else "loss" if a - b < -TIE else "tie"
        outcomes[outcome] += 1
        differences.append(a - b)
        assert row.get_attribute("data-outcome") == outcome
        assert (
            row.locator('[data-field="winner"]').inner_text()
            == {"win": "A", "loss": "B", "tie": "Tie"}[outcome]
        )
    # case0 has the same label in both tests, so the same Dice; case1's label changed, so did its Dice
    assert outcomes["tie"] >= 1 and dice[first][case1] != dice[second][case1]
    summary = page.locator("#compare-summary").inner_text()
    assert (
        f"better on {outcomes['win']} images" in summary
        and f"on {outcomes['loss']}, {outcomes['tie']} ties" in summary
    )
    mean = float(np.mean(differences))
    assert f"{abs(mean):.3f}" in summary

    overlays = page.locator("#compare-overlays img")
    expect(overlays).to_have_count(2 * len(CASES))
    for side in ("A", "B"):
        figure = page.locator(f'#compare-overlays [data-case="{case1}"] figure[data-side="{side}"] img')
        assert f"{case1} in test {side}" in figure.get_attribute("alt")
        assert figure.evaluate("img => img.complete && img.naturalWidth > 0")
    web.shot(page, "model-test-compare")

    # --- feedback on one tested image, opened from its row (by keyboard) ---------------------------------
    tested = next(c for c in detail[second]["cases"] if c["name"] == case1)
    link = page.locator(f'#cases-table tbody tr[data-case="{case1}"] a[data-action=feedback]')
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/feedback?**")
    assert page.get_by_label("Organ").input_value() == "liver"
    expect(page.get_by_label("Model version")).to_have_value(detail[second]["model_version"])
    expect(page.locator("#case-context")).to_contain_text(case1)
    web.shot(page, "feedback-on-case")
    page.get_by_label("What did you see?").fill("case1: the label and the prediction disagree on the left")
    page.get_by_role("button", name="Send feedback").click()
    thread = page.locator("#threads article", has_text="disagree on the left")
    expect(thread).to_contain_text(f"tested image #{tested['id']}")
    sent = [
        f
        for f in page.request.get("/api/v1/feedback?organ=liver").json()["feedback"]
        if "disagree" in f["body"]
    ]
    assert [(f["evaluation_case_id"], f["model_version"]) for f in sent] == [
        (tested["id"], detail[second]["model_version"])
    ]


def test_a_saved_segmentation_gets_feedback_from_the_history(web, browser_page):
    page = browser_page()
    web.sign_in(page, "doctor")
    page.goto("/history")
    csrf = {"X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content")}
    image = {"name": "ward.png", "mimeType": "image/png", "buffer": png_bytes(disc_image(64, seed=3))}
    segmented = page.request.post(
        "/api/v1/segment", multipart={"organ": "liver", "patient_id": "P-FB-1", "file": image}, headers=csrf,
        timeout=RESULT_TIMEOUT_MS,
    )  # fmt: skip
    assert segmented.ok, segmented.text()
    seg = segmented.json()
    chosen = page.request.post(
        f"/api/v1/segmentations/{seg['id']}/choice", data={"threshold": 0.4}, headers=csrf
    )
    assert chosen.ok, chosen.text()

    page.get_by_label("Patient ID").fill("P-FB-1")
    page.get_by_role("button", name="Filter").click()
    row = page.locator(f'#history-table tbody tr[data-segmentation-id="{seg["id"]}"]')
    row.get_by_role("link", name="Feedback on this case").click()
    page.wait_for_url("**/feedback?**")
    expect(page.get_by_label("Model version")).to_have_value(seg["model"]["version"])
    assert page.get_by_label("Case (image or segmentation)").input_value() == seg["id"]
    assert page.get_by_label("Threshold").input_value() == "0.4"
    page.get_by_label("What did you see?").fill("at 0.4 the mask leaks into the <b>kidney</b>")
    page.get_by_role("button", name="Send feedback").click()
    thread = page.locator("#threads article", has_text="leaks into the <b>kidney</b>")  # shown as text
    expect(thread).to_contain_text(seg["id"])
    expect(thread).to_contain_text("Threshold 0.4")
    sent = [
        f for f in page.request.get("/api/v1/feedback?organ=liver").json()["feedback"] if "leaks" in f["body"]
    ]
    assert [(f["segmentation_id"], f["threshold"]) for f in sent] == [(seg["id"], 0.4)]
