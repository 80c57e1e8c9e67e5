"""A researcher's side: model versions with their cards, and training jobs with live progress."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_researcher_sees_model_versions_and_the_admin_pages_stay_closed(web, browser_page):
    page = browser_page()
    web.sign_in(page, "researcher")
    page.goto("/models")
    page.get_by_label("Organ").select_option("liver")
    row = page.locator("#versions-table tr[data-version]").first
    expect(row).to_contain_text("default")
    row.get_by_role("button", name="Card").click()
    expect(page.get_by_role("dialog")).to_contain_text("Model card")
    web.shot(page, "models")
    assert page.goto("/admin/api-keys").status == 403


def test_researcher_starts_training_and_sees_progress(web, browser_page):
    page = browser_page()
    web.sign_in(page, "researcher")
    page.goto("/training")
    web.shot(page, "training")
    expect(page.locator("#jobs")).to_be_visible()
