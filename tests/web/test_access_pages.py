"""Who reaches which page: signed-out visitors go to sign-in (and come back), a doctor gets the 403 page
on researcher and admin pages, the language choice sticks to the account (in the database: any browser)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from gateway.core.db import session_scope
from gateway.resources.accounts import service as accounts
from tests.web.helpers import PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_signed_out_visitor_is_sent_to_sign_in_and_back(web, browser_page):
    page = browser_page()
    page.goto("/history?organ=liver")
    assert re.search(r"/sign-in\?next=/history%3Forgan%3Dliver$", page.url)
    web.shot(page, "sign-in")
    page.get_by_label("E-mail address").fill(web.users["doctor"])
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/history?organ=liver")
    assert page.get_by_role("heading", name="History").is_visible()


@pytest.mark.parametrize("path", ["/admin/users", "/admin/api-keys", "/admin/audit", "/training", "/models"])
def test_doctor_gets_the_403_page_on_researcher_and_admin_pages(web, browser_page, path):
    page = browser_page()
    web.sign_in(page, "doctor")
    response = page.goto(path)
    assert response.status == 403
    assert "text/html" in response.headers["content-type"]
    expect(page.get_by_test_id("forbidden")).to_contain_text("This page is for")
    assert "Traceback" not in page.content()
    # the navigation only offers what a doctor may open
    nav = page.get_by_role("navigation")
    assert nav.get_by_role("link", name="Segment").is_visible()
    assert nav.get_by_role("link", name="Users").count() == 0
    if path == "/admin/users":
        web.shot(page, "forbidden-403")


def test_language_is_remembered_for_the_account_on_any_browser(web, browser_page):
    email = "polyglot@example.org"  # an account of its own: the choice is kept in the shared database
    with session_scope(web.engine) as session:
        accounts.create_user(
            session, email=email, password=PASSWORD, full_name="Test Polyglot", role="researcher",
            status="active", actor="test",
        )  # fmt: skip
    page = browser_page()
    web.sign_in(page, email)
    page.goto("/models")
    with page.expect_navigation(url="**/models"):  # the page saves the choice to the account, then follows
        page.get_by_role("link", name="中文").click()
    expect(page.get_by_role("heading", name="模型管理")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    web.shot(page, "models-zh")
    page.get_by_role("button", name="退出登录").click()
    page.wait_for_url("**/sign-in")
    # another person on the same browser keeps their own language (English by default) ...
    page.context.clear_cookies(name="medseg_lang")
    web.sign_in(page, "doctor")
    page.goto("/segment")
    assert page.get_by_role("heading", name="Segment an image").is_visible()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    # ... and the researcher gets Chinese back on a browser that has never seen the choice
    other = browser_page()
    other.goto("/sign-in")
    assert other.get_by_role("heading", name="Sign in to MedSeg").is_visible()  # signed out: no choice here
    web.sign_in(other, email)
    other.wait_for_url("**/models")
    assert other.get_by_role("heading", name="模型管理").is_visible()
    assert other.locator("html").get_attribute("lang") == "zh-CN"
