"""Responsive down to a tablet (issue 6): every page an admin can open (all of them) fits a tablet's width in
portrait and landscape without scrolling sideways, the collapsed navigation opens from the keyboard, and each
page's tablet screenshot is kept as a test artefact (test-artifacts/web/tablet-*.png)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.helpers import ADMIN_PAGES, Settle, disc_image, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLETS = {"portrait": {"width": 768, "height": 1024}, "landscape": {"width": 1024, "height": 768}}


def _overflow(page) -> int:
    """How many CSS pixels the page is wider than the viewport (0: nothing to scroll sideways)."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


@pytest.mark.parametrize("orientation", sorted(TABLETS))
def test_every_page_fits_a_tablet_and_the_navigation_works_by_keyboard(web, browser_page, orientation):
    page = browser_page(viewport=TABLETS[orientation], has_touch=True)
    settled = Settle(page)
    web.sign_in(page, "admin")
    # one saved segmentation, so the history table has a row with its thumbnail
    csrf = {"X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content")}
    image = {"name": "tablet.png", "mimeType": "image/png", "buffer": png_bytes(disc_image(64, seed=5))}
    segmented = page.request.post(
        "/api/v1/segment", multipart={"organ": "liver", "patient_id": "P-TABLET", "file": image},
        headers=csrf, timeout=120_000,
    )  # fmt: skip
    assert segmented.ok, segmented.text()

    wide = {}
    for path in ADMIN_PAGES:
        response = page.goto(path)
        assert response.status == 200, path
        settled()
        wide[path] = _overflow(page)
        web.shot(page, f"tablet-{orientation}-{path.strip('/').replace('/', '-')}")
    assert {p: px for p, px in wide.items() if px > 0} == {}

    # below Bootstrap's xl breakpoint (1200 px; an admin's navigation is wider than a 1024 px landscape
    # tablet) the navigation collapses behind its toggler: open it by keyboard
    page.goto("/segment")
    toggler = page.locator(".navbar-toggler")
    if page.viewport_size["width"] < 1200:
        expect(toggler).to_be_visible()
        expect(page.get_by_role("link", name="History")).to_be_hidden()
        toggler.focus()
        page.keyboard.press("Enter")
        expect(toggler).to_have_attribute("aria-expanded", "true")
    else:
        expect(toggler).to_be_hidden()
    history = page.get_by_role("navigation").get_by_role("link", name="History")
    expect(history).to_be_visible()
    history.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/history")
