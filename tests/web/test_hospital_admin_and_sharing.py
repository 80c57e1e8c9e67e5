"""Issue 15 in the pages: a doctor shares a feedback thread with their hospital's doctors (the checkbox when
writing, the author's switch on the thread) and a colleague sees it only while it is shared; a hospital's
admin sees their hospital's people and keys only, cannot disable their own account from the page, and makes
keys of their hospital only."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from gateway.core.db import session_scope
from gateway.resources.accounts import service as accounts
from gateway.security import create_api_key
from tests.web.helpers import PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSPITAL_A, HOSPITAL_B = "St. Anna", "Bellevue"  # "doctor" of tests/web/conftest.py is St. Anna's


@pytest.fixture(scope="module")
def people(web):
    """A colleague of the web's doctor, a doctor and a key of another hospital, and St. Anna's admin."""
    made = {}
    with session_scope(web.engine) as session:
        for name, role, hospital in (
            ("colleague", "doctor", HOSPITAL_A),
            ("bellevue_doctor", "doctor", HOSPITAL_B),
            ("st_anna_admin", "admin", HOSPITAL_A),
        ):
            email = f"{name}-{uuid.uuid4().hex[:6]}@example.org"
            accounts.create_user(
                session, email=email, password=PASSWORD, full_name=name.replace("_", " ").title(), role=role,
                status="active", hospital=hospital, actor="test",
            )  # fmt: skip
            web.users[name] = made[name] = email
        key = create_api_key(session, "bellevue-ris", ["segment"], hospital=HOSPITAL_B)[0]
        made["bellevue_key"] = key.prefix
    return made


def _open_feedback(page) -> None:
    page.goto("/feedback")
    page.get_by_label("Organ").select_option("liver")
    page.locator("#version option").first.wait_for(state="attached")


def test_a_doctor_shares_a_thread_with_their_hospital_and_stops(web, browser_page, people):
    text = f"shared {uuid.uuid4().hex[:6]}: the capsule is cut at 0.5"
    author = browser_page()
    web.sign_in(author, "doctor", next_path="/feedback")
    _open_feedback(author)
    author.get_by_label("What did you see?").fill(text)
    # the new feedback's checkbox (each thread below has a switch of that name)
    author.get_by_role("checkbox", name="Share with my hospital's doctors").check()
    author.get_by_role("button", name="Send feedback").click()
    thread = author.locator("#threads article", has_text=text)
    switch = thread.get_by_role("switch", name="Share with my hospital's doctors")
    expect(switch).to_be_checked()
    web.shot(author, "feedback-shared-by-author")

    colleague = browser_page()
    web.sign_in(colleague, "colleague", next_path="/feedback")
    _open_feedback(colleague)
    seen = colleague.locator("#threads article", has_text=text)
    expect(seen.locator("[data-shared]")).to_have_text("Shared with the hospital's doctors")
    expect(seen.get_by_role("switch")).to_have_count(0)  # only the author switches it
    web.shot(colleague, "feedback-shared-seen-by-colleague")

    with author.expect_response(lambda r: r.request.method == "PATCH" and "/api/v1/feedback/" in r.url):
        switch.uncheck()
    _open_feedback(colleague)
    colleague.locator("#threads > *").first.wait_for()
    expect(colleague.locator("#threads article", has_text=text)).to_have_count(0)
    _open_feedback(author)  # the author still has it, not shared
    expect(author.locator("#threads article", has_text=text).get_by_role("switch")).not_to_be_checked()


def test_a_hospital_admin_sees_their_hospital_and_cannot_disable_themselves(web, browser_page, people):
    admin = browser_page()
    web.sign_in(admin, "st_anna_admin", next_path="/admin/users")
    expect(admin.locator("#admin-scope")).to_contain_text("You administer St. Anna")
    rows = admin.locator("#users-table tbody tr")
    expect(rows.filter(has_text=people["colleague"])).to_have_count(1)
    expect(rows.filter(has_text=web.users["doctor"])).to_have_count(1)
    expect(rows.filter(has_text=people["bellevue_doctor"])).to_have_count(0)
    expect(rows.filter(has_text=web.users["admin"])).to_have_count(0)  # the platform admin has no hospital
    own = rows.filter(has_text=people["st_anna_admin"])
    expect(own.locator("[data-action=disable]")).to_have_count(0)
    expect(own.get_by_role("combobox")).to_be_disabled()
    expect(own).to_contain_text("your account")
    expect(rows.filter(has_text=people["colleague"]).locator("[data-action=disable]")).to_have_count(1)
    web.shot(admin, "admin-users-of-one-hospital")

    admin.goto("/admin/api-keys")
    hospital = admin.get_by_label("Hospital")
    expect(hospital).to_have_value(HOSPITAL_A)
    expect(hospital).not_to_be_editable()
    admin.get_by_label("Name", exact=True).fill("st-anna-pacs")
    admin.get_by_label("segment").check()
    admin.get_by_role("button", name="Create key").click()
    expect(admin.locator("#key-created")).to_be_visible()
    keys = admin.locator("#keys-table tbody tr")
    expect(keys.filter(has_text="st-anna-pacs")).to_contain_text(HOSPITAL_A)
    expect(admin.locator(f'#keys-table tr[data-prefix="{people["bellevue_key"]}"]')).to_have_count(0)

    platform = browser_page()
    web.sign_in(platform, "admin", next_path="/admin/users")
    expect(platform.locator("#admin-scope")).to_contain_text("Platform administrator")
    everyone = platform.locator("#users-table tbody tr")
    expect(everyone.filter(has_text=people["bellevue_doctor"])).to_have_count(1)
