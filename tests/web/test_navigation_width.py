"""The top navigation on a laptop screen (1280×800, and 1200 px, where it stops collapsing): an admin sees
the most items (every page, the admin menu, the language switch, the name and role, sign-out), and they must
still sit on one line, in English and in Chinese, on every page; the admin menu opens and is walked from the
keyboard. The screenshots are kept (test-artifacts/web/nav-<width>-<lang>*.png)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.web.helpers import ADMIN_PAGES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A common laptop screen, and the narrowest width at which the bar is expanded (Bootstrap's xl breakpoint).
WIDTHS = [1280, 1200]
# The brand, every link, the admin menu's button and sign-out (each language name is an item of its own).
NAV_ITEMS = "nav.navbar .navbar-brand, nav.navbar .nav-link, nav.navbar #sign-out"


def _items(page) -> list[dict]:
    """Text and box (CSS px) of every visible item in the top navigation."""
    return page.eval_on_selector_all(
        NAV_ITEMS,
        """els => els.filter(e => e.offsetParent !== null).map(e => {
            const box = e.getBoundingClientRect();
            return {text: e.innerText.trim(), link: e.matches('.nav-link'), top: box.top, bottom: box.bottom,
                    right: box.right};
        })""",
    )


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_an_admins_navigation_is_one_line_on_a_laptop_screen(web, browser_page, lang, width):
    page = browser_page(viewport={"width": width, "height": 800})
    web.sign_in(page, "admin")
    page.goto(f"/set-language?lang={lang}")  # this browser's choice (the admin's account has none)
    for path in ADMIN_PAGES:
        assert page.goto(path).status == 200, path
        items = _items(page)
        if path == ADMIN_PAGES[0]:
            web.shot(page, f"nav-{width}-{lang}")  # kept as evidence before the checks, so a failure shows it
        # the brand, 8 pages, the admin menu, 2 languages, the profile and sign-out: none behind the toggler
        assert len(items) == 14, (path, items)
        links = [i for i in items if i["link"]]
        assert max(i["top"] for i in links) - min(i["top"] for i in links) < 1, (path, items)
        # the brand and the sign-out button differ in height, yet share the line with the links
        assert max(i["top"] for i in items) < min(i["bottom"] for i in items), (path, items)
        assert max(i["right"] for i in items) <= width, (path, items)

    # the admin's own pages, from the keyboard: focus the menu, open it, walk down to the audit log
    page.goto("/segment")
    menu = page.locator("#admin-menu")
    expect(menu).not_to_have_class(re.compile(r"\bactive\b"))
    menu.focus()
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("aria-expanded", "true")
    for _ in range(3):  # Users, API keys, Audit log
        page.keyboard.press("ArrowDown")
    web.shot(page, f"nav-{width}-{lang}-admin-menu")
    page.keyboard.press("Enter")
    page.wait_for_url("**/admin/audit")
    expect(menu).to_have_class(re.compile(r"\bactive\b"))  # the menu shows the admin page you are on
    expect(page.locator(".dropdown-item[aria-current=page]")).to_have_attribute("href", "/admin/audit")
