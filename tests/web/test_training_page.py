"""A researcher starts a short training job from the training page (a tiny budget on a tiny dataset), watches
its progress (epoch, loss and validation Dice shown, the curve growing with each epoch) and cancels it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.web.helpers import dataset_zip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH_TIMEOUT_MS = 120_000  # the worker starts torch and fetches the dataset on a shared 2-core machine


def _upload_dataset(web, browser_page, name: str) -> str:
    """A tiny liver dataset (six 32×32 pairs) uploaded by a doctor through the API; its id."""
    doctor = browser_page()
    web.sign_in(doctor, "doctor")
    doctor.goto("/datasets")
    csrf = doctor.locator('meta[name="csrf-token"]').get_attribute("content")
    upload = {"name": f"{name}.zip", "mimeType": "application/zip", "buffer": dataset_zip(pairs=6)}
    response = doctor.request.post(
        "/api/v1/datasets", multipart={"organ": "liver", "name": name, "file": upload},
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert response.status == 201, response.text()
    return response.json()["id"]


def _epoch(card) -> int:
    return int(card.locator('[data-field="epoch"]').inner_text().split("/")[0])


def test_researcher_starts_a_job_sees_progress_and_cancels_it(web, browser_page):
    dataset_id = _upload_dataset(web, browser_page, "tiny-training-set")
    page = browser_page()
    web.sign_in(page, "researcher")
    page.goto("/training")
    try:
        page.get_by_label("Organ").select_option("liver")
        page.get_by_label("Dataset").select_option(dataset_id)
        page.get_by_label("Architecture").select_option("erunet")
        page.get_by_label("Time budget (minutes)").fill("1")
        page.get_by_label("Epochs").fill("500")  # more than one minute allows: the job is still running
        page.get_by_role("button", name="Start a training job").click()
        expect(page.locator("#train-ok")).to_contain_text("Job started")

        card = page.locator(f'#jobs article[data-status="running"]:has-text("{dataset_id}")')
        card.locator('[data-field="epoch"]').wait_for(timeout=EPOCH_TIMEOUT_MS)
        job_id = card.get_attribute("data-job-id")
        assert re.fullmatch(r"\d+ / 500", card.locator('[data-field="epoch"]').inner_text())
        assert float(card.locator('[data-field="loss"]').inner_text()) > 0
        assert 0.0 <= float(card.locator('[data-field="val_dice"]').inner_text()) <= 1.0
        expect(card.locator('[data-field="status"]')).to_have_text("Running")
        points = card.locator('[data-field="curve"] svg circle').count()
        assert points >= 1
        first_epoch = _epoch(card)
        # the page polls: the next epoch appears without a reload and the curve grows
        expect(card.locator('[data-field="epoch"]')).not_to_have_text(
            re.compile(rf"^{first_epoch} /"), timeout=EPOCH_TIMEOUT_MS
        )
        assert _epoch(card) > first_epoch
        assert card.locator('[data-field="curve"] svg circle').count() > points
        web.shot(page, "training-progress")

        job = page.request.get(f"/api/v1/training/jobs/{job_id}").json()
        assert job["status"] == "running" and len(job["progress"]) >= 2

        cancel = page.locator(f'#jobs article[data-job-id="{job_id}"]').get_by_role(
            "button", name="Cancel job"
        )
        cancel.focus()
        page.keyboard.press("Enter")  # keyboard-usable
        cancelled = page.locator(f'#jobs article[data-job-id="{job_id}"]')
        expect(cancelled).to_have_attribute("data-status", "cancelled")
        expect(cancelled.locator('[data-field="status"]')).to_have_text("Cancelled")
        expect(cancelled.get_by_role("button", name="Cancel job")).to_have_count(0)
        web.shot(page, "training-cancelled")
        job = page.request.get(f"/api/v1/training/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["pid"] is None
        assert job["error"].startswith("cancelled by user:")
    finally:
        web.app.state.clinic.jobs.stop_workers()  # a failed assertion must not leave a worker training
