"""Error pages in a real browser: an unknown page URL gets the styled 404 page in the base layout (with the
navigation, in the viewer's language, keyboard-usable); API paths keep the JSON error shape."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_unknown_page_shows_the_404_page_and_leads_back(web, browser_page):
    page = browser_page()
    web.sign_in(page, "doctor")
    response = page.goto("/no-such-page?x=<b>bold</b>")
    assert response.status == 404 and "text/html" in response.headers["content-type"]
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_test_id("error-text")).to_contain_text("/no-such-page")
    assert page.get_by_role("navigation").get_by_role("link", name="Segment").is_visible()
    assert "Traceback" not in page.content()
    web.shot(page, "error-404")

    page.keyboard.press("Tab")  # the first stop is the skip link, as on every page
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.get_by_role("link", name="Back to the start page").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/segment")

    api = page.request.get("/api/v1/no-such-thing")
    assert api.status == 404 and api.json()["error"]["code"] == "not_found"


def test_the_404_page_speaks_the_visitors_language(web, browser_page):
    page = browser_page(locale="zh-CN")
    response = page.goto("/nirgendwo")
    assert response.status == 404
    expect(page.get_by_role("heading", name="页面不存在")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.get_by_role("link", name="登录").is_visible()  # signed out: the layout offers sign-in
    web.shot(page, "error-404-zh")
