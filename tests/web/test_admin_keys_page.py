"""The admin's API-keys page: a key is created with a name and scopes and shown exactly once with the warning
to copy it now, the list shows its prefix and scopes, and after revoking it shows as revoked and stops
working; an empty name or no scope is refused with a clear message; a doctor gets the 403 page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "PACS bridge <b>ward 3</b>"  # markup in a name is shown as text
SCOPES = ("segment", "evaluate")
PROTECTED = "/api/v1/models/liver/versions"  # a route a key with scope segment or evaluate may read


def _listed(page, name: str) -> dict:
    keys = [k for k in page.request.get("/api/v1/api-keys").json()["api_keys"] if k["name"] == name]
    assert len(keys) == 1, keys
    return keys[0]


def test_admin_creates_a_key_sees_it_once_and_revokes_it(web, browser_page):
    page = browser_page()
    web.sign_in(page, "admin", next_path="/admin/api-keys")
    error, created = page.locator("#key-error"), page.locator("#key-created")
    create = page.get_by_role("button", name="Create key")

    # --- empty name and no scope, then only no scope: clear messages, nothing created ---
    before = page.request.get("/api/v1/api-keys").json()["api_keys"]
    create.click()
    expect(error).to_have_text("Give the key a name (who or what will use it). Choose at least one scope.")
    expect(page.get_by_label("Name", exact=True)).to_be_focused()
    page.get_by_label("Name", exact=True).fill(NAME)
    create.click()
    expect(error).to_have_text("Choose at least one scope.")
    expect(created).to_be_hidden()
    assert page.request.get("/api/v1/api-keys").json()["api_keys"] == before
    web.shot(page, "api-keys-missing-scope")

    # --- created: the whole key once, with the warning; listed by prefix with its scopes ---
    for scope in SCOPES:
        page.get_by_label(scope, exact=True).check()
    create.click()
    expect(created).to_be_visible()
    expect(error).to_be_hidden()
    expect(created).to_contain_text("Copy this key now; it is not shown again:")
    key = page.locator("#new-key").inner_text()
    listed = _listed(page, NAME)
    assert set(listed["scopes"]) == set(SCOPES) and listed["revoked_at"] is None
    assert key.startswith(f"msk_{listed['prefix']}_") and len(key) > 40
    row = page.locator(f'#keys-table tr[data-prefix="{listed["prefix"]}"]')
    expect(row.locator("td").nth(0)).to_have_text(listed["prefix"])
    expect(row.locator("td").nth(1)).to_have_text(NAME)
    expect(row.locator("td").nth(2)).to_have_text(", ".join(listed["scopes"]))
    expect(page.get_by_label("Name", exact=True)).to_have_value("")  # the form is ready for the next key
    web.shot(page, "api-keys-created")

    caller = browser_page().request  # no session cookie: the key alone
    bearer = {"Authorization": f"Bearer {key}"}
    assert caller.get(PROTECTED, headers=bearer).status == 200

    # --- shown once: a reload lists the prefix only ---
    page.reload()
    expect(row).to_be_visible()
    expect(created).to_be_hidden()
    assert key not in page.content()
    assert listed["prefix"] in page.content()

    # --- revoked: the row says so and the key stops working ---
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator("td").nth(6)).to_have_text("revoked")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    assert _listed(page, NAME)["revoked_at"] is not None
    assert caller.get(PROTECTED, headers=bearer).status == 401
    web.shot(page, "api-keys-revoked")


def test_doctor_gets_the_403_page_and_cannot_create_keys(web, browser_page):
    page = browser_page()
    web.sign_in(page, "doctor")
    response = page.goto("/admin/api-keys")
    assert response.status == 403
    expect(page.get_by_test_id("forbidden")).to_be_visible()
    assert page.locator("#key-form").count() == 0
    web.shot(page, "api-keys-403-doctor")
    csrf = {"X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content")}
    refused = page.request.post(
        "/api/v1/api-keys", data={"name": "mine", "scopes": ["segment"]}, headers=csrf
    )
    assert refused.status == 403 and refused.json()["error"]["code"] == "forbidden"
