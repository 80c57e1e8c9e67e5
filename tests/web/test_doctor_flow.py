"""The doctor's day in a real browser: register → an admin approves → sign in → upload a small dataset →
test the model → leave feedback → segment an image → move the threshold slider → save → find it in history.
Every page is photographed into test-artifacts/web/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.web.helpers import PASSWORD, dataset_zip, disc_image, disc_label, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_DOCTOR = "dr.li@example.org"
RESULT_TIMEOUT_MS = 120_000  # untrained models on a shared 2-core machine


def test_doctor_registers_is_approved_and_works_through_the_clinical_pages(web, browser_page, tmp_path):
    doctor = browser_page()

    # --- register (the account waits for approval) -------------------------------------------------
    doctor.goto("/register")
    doctor.get_by_label("Full name").fill("Li Wei")
    doctor.get_by_label("E-mail address").fill(NEW_DOCTOR)
    doctor.get_by_label("Password").fill(PASSWORD)
    doctor.get_by_label("Department").fill("Hepatology")
    doctor.get_by_label("Hospital").fill("St. Anna")
    web.shot(doctor, "register")
    doctor.get_by_role("button", name="Register").click()
    expect(doctor.locator("#form-ok")).to_contain_text("awaits approval")

    doctor.goto("/sign-in")
    doctor.get_by_label("E-mail address").fill(NEW_DOCTOR)
    doctor.get_by_label("Password").fill(PASSWORD)
    doctor.get_by_role("button", name="Sign in").click()
    expect(doctor.locator("#form-error")).to_contain_text("awaits approval")

    # --- an admin approves ---------------------------------------------------------------------------
    admin = browser_page()
    web.sign_in(admin, "admin")
    admin.goto("/admin/users")
    admin.get_by_label("Only accounts awaiting approval").check()
    row = admin.locator(f'tr[data-email="{NEW_DOCTOR}"]')
    web.shot(admin, "admin-users")
    row.get_by_role("button", name="Approve").click()
    expect(admin.locator("#users-ok")).to_contain_text(f"Updated {NEW_DOCTOR}")
    admin.goto("/admin/audit")
    admin.locator("#audit-table tbody tr").first.wait_for()
    expect(admin.locator("#audit-table code", has_text="user.approve").first).to_be_visible()
    web.shot(admin, "admin-audit")

    # --- sign in, profile ----------------------------------------------------------------------------
    doctor.get_by_role("button", name="Sign in").click()
    doctor.wait_for_url("**/segment")
    doctor.goto("/profile")
    expect(doctor.get_by_test_id("profile-email")).to_have_text(NEW_DOCTOR)
    web.shot(doctor, "profile")

    # --- upload a small dataset: progress bar, validation result, list -------------------------------
    doctor.goto("/datasets")
    doctor.get_by_label("Organ").select_option("liver")
    zip_path = tmp_path / "ward7.zip"
    zip_path.write_bytes(dataset_zip(pairs=2))
    doctor.get_by_label("Zip file").set_input_files(zip_path)
    doctor.get_by_label("Notes").fill("two liver slices")
    doctor.get_by_role("button", name="Upload a dataset").click()
    result = doctor.locator("#upload-result")
    result.wait_for(state="visible")
    expect(result.locator('[data-field="pair_count"]')).to_have_text("2")
    assert re.fullmatch(r"[0-9a-f]{64}", result.locator('[data-field="dataset_hash"]').inner_text())
    doctor.locator("#datasets-table tbody tr", has_text="ward7").wait_for()
    web.shot(doctor, "datasets")

    # --- model test: per-image Dice, Dice-vs-threshold plot ------------------------------------------
    images, labels = [], []
    for i in range(2):
        images.append(tmp_path / f"case{i}.png")
        images[-1].write_bytes(png_bytes(disc_image(64, seed=i)))
        labels.append(tmp_path / f"case{i}_mask.png")
        labels[-1].write_bytes(png_bytes(disc_label(64)))
    doctor.goto("/model-test")
    doctor.get_by_label("Organ").select_option("liver")
    doctor.get_by_label("Images").set_input_files(images)
    doctor.get_by_label("Label masks").set_input_files(labels)
    doctor.get_by_role("button", name="Run the test").click()
    doctor.locator("#test-result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    expect(doctor.locator("#cases-table tbody tr")).to_have_count(2)
    assert "Mean Dice" in doctor.locator("#test-summary").inner_text()
    assert doctor.locator("#dice-plot svg circle").count() == 7
    web.shot(doctor, "model-test")

    # --- feedback on the current version -------------------------------------------------------------
    doctor.goto("/feedback")
    doctor.get_by_label("Organ").select_option("liver")
    doctor.locator("#version option").first.wait_for(state="attached")
    doctor.get_by_label("What did you see?").fill("case 1: lower-right part of the liver missing")
    doctor.get_by_role("button", name="Send feedback").click()
    doctor.locator("#threads article", has_text="lower-right part").wait_for()
    web.shot(doctor, "feedback")

    # --- segment, move the slider, save ---------------------------------------------------------------
    image = tmp_path / "patient-image.png"
    image.write_bytes(png_bytes(disc_image(64, seed=7)))
    doctor.goto("/segment")
    doctor.get_by_label("Organ").select_option("liver")
    doctor.get_by_label("Image (PNG, JPEG, TIFF or DICOM)").set_input_files(image)
    doctor.get_by_label("Patient ID").fill("P-0042")
    doctor.get_by_role("button", name="Segment").click()
    doctor.locator("#result").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    gallery = doctor.locator("#gallery button")
    expect(gallery).to_have_count(7)  # segment.js builds it after the result box shows and the viewer opens
    assert [b.get_attribute("data-threshold") for b in gallery.all()] == [
        "0.2",
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
    ]
    for img in doctor.locator("#gallery img").all():
        assert img.get_attribute("alt").startswith("Mask at threshold")
    suggested = doctor.locator("#threshold-value").inner_text()
    assert doctor.locator("#suggested-badge").is_visible()
    assert (
        doctor.locator(f'#gallery button[data-threshold="{suggested}"]').get_attribute("aria-pressed")
        == "true"
    )
    assert re.fullmatch(r"\d\.\d\d", doctor.locator('[data-field="stability"]').inner_text())
    web.shot(doctor, "segment-result")

    slider = doctor.get_by_label(re.compile("Threshold slider"))
    slider.focus()
    key = "ArrowLeft" if suggested == "0.8" else "ArrowRight"
    doctor.keyboard.press(key)
    chosen = doctor.locator("#threshold-value").inner_text()
    assert chosen != suggested
    assert (
        doctor.locator(f'#gallery button[data-threshold="{chosen}"]').get_attribute("aria-pressed") == "true"
    )
    assert re.search(rf"-t{re.escape(chosen)}\.png$", doctor.locator("#download").get_attribute("download"))
    with doctor.expect_download() as download:
        doctor.get_by_role("link", name="Download mask PNG").click()
    assert download.value.suggested_filename.endswith(f"-t{chosen}.png")
    shown_mask = Path(download.value.path()).read_bytes()

    doctor.get_by_label("Note").fill("<script>alert('x')</script> borderline")
    doctor.get_by_role("button", name="Save this result").click()
    expect(doctor.locator("#save-ok")).to_contain_text(f"threshold {chosen} for patient P-0042")
    web.shot(doctor, "segment-saved")

    # --- history: the saved threshold and the note, escaped ------------------------------------------
    doctor.goto("/history")
    doctor.get_by_label("Patient ID").fill("P-0042")
    doctor.get_by_role("button", name="Filter").click()
    row = doctor.locator("#history-table tbody tr[data-segmentation-id]").first
    row.wait_for()
    expect(row.locator('[data-field="threshold"]')).to_have_text(chosen)
    assert "<script>alert('x')</script> borderline" in row.inner_text()  # shown as text, never run
    assert row.locator("img.thumb").get_attribute("alt").startswith("Mask thumbnail for Liver")
    with doctor.expect_download() as download:  # the saved mask, read back from the object store
        row.get_by_role("link", name="Mask PNG").click()
    assert download.value.suggested_filename.endswith(f"-t{chosen}.png")
    assert Path(download.value.path()).read_bytes() == shown_mask
    doctor.locator("#trend-plot canvas#trend-chart").wait_for()  # Chart.js (history_trend.js)
    web.shot(doctor, "history")
