"""Every page as a doctor, a researcher and an admin, in English and Chinese, on a laptop (1280 px) and a
phone (390 px), with rows in every table (issue 18, "Must show"). A page fails on a script error, a failed
request, a visible "[object Object]", "undefined" or "NaN", a button whose label wraps (in Chinese: inside a
word), a select too narrow for its choice, or an action out of reach (outside the viewport's width). Each
page's screenshot is kept: test-artifacts/web/sweep-<role>-<lang>-<width><page>.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.web.helpers import (
    ADMIN_PAGES,
    BROKEN_VALUES,
    LAYOUT_PROBLEMS,
    Settle,
    api_client,
    dataset_zip,
    disc_image,
    labelled_cases,
    png_bytes,
    shipped_card_on_default,
    small_nifti,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCTOR_PAGES = ["/segment", "/studies", "/history", "/datasets", "/model-test", "/feedback", "/profile"]
PAGES = {
    "doctor": DOCTOR_PAGES,
    "researcher": [*DOCTOR_PAGES, "/training", "/models"],
    "admin": ADMIN_PAGES,
}
VIEWPORTS = {1280: {"width": 1280, "height": 800}, 390: {"width": 390, "height": 844}}
ACCOUNTS = {role: f"sweep.{role}@example.org" for role in PAGES}


@dataclass
class SweepWorld:
    emails: dict[str, str]


def _signed_in(chromium, web, email: str):
    context = chromium.new_context(base_url=web.base_url)
    page = context.new_page()
    web.sign_in(page, email, next_path="/profile")
    return context, page


@pytest.fixture(scope="module")
def world(web, chromium) -> Iterator[SweepWorld]:
    """Accounts of the sweep's own, and a row in every table each of them sees: the doctor's segmentation,
    dataset, two tests and a feedback thread with the researcher's reply; an account awaiting approval and an
    API key for the admin; liver's default with a real model card (its metrics hold nested values)."""
    with shipped_card_on_default(web, "liver"):
        yield _populate(web, chromium)


def _populate(web, chromium) -> SweepWorld:
    hospitals = {"doctor": "St. Anna", "researcher": None, "admin": None}
    for role, email in ACCOUNTS.items():
        web.add_user(email, role=role, hospital=hospitals[role])
    web.add_user("sweep.pending@example.org", status="pending")

    context, page = _signed_in(chromium, web, ACCOUNTS["doctor"])
    with api_client(page) as api:
        image = ("sweep.png", png_bytes(disc_image(64, seed=11)), "image/png")
        made = api.post(
            "/api/v1/segment", data={"organ": "liver", "patient_id": "P-SWEEP"}, files={"file": image}
        )
        assert made.status_code == 200, made.text
        assert api.post(
            f"/api/v1/segmentations/{made.json()['id']}/choice", json={"threshold": 0.5}
        ).is_success
        study = api.post("/api/v1/studies", data={"organ": "liver", "patient_id": "P-SWEEP"},
                         files={"files": ("sweep.nii.gz", small_nifti(), "application/gzip")})  # fmt: skip
        assert study.status_code == 202, study.text
        uploaded = api.post("/api/v1/datasets", data={"organ": "liver", "name": "sweep-set"},
                            files={"file": ("sweep.zip", dataset_zip(2))})  # fmt: skip
        assert uploaded.is_success, uploaded.text
        for _ in range(2):
            ran = api.post("/api/v1/evaluations", data={"organ": "liver"}, files=labelled_cases(["s1.png"]))
            assert ran.is_success, ran.text
        version = api.get("/api/v1/models/liver/versions").json()["default_version"]
        thread = api.post(
            f"/api/v1/models/liver/versions/{version}/feedback", json={"body": "sweep: edge missed"}
        )
        assert thread.is_success, thread.text
    context.close()

    context, page = _signed_in(chromium, web, ACCOUNTS["researcher"])
    with api_client(page) as api:
        assert api.post(
            f"/api/v1/feedback/{thread.json()['id']}/replies", json={"body": "sweep: noted"}
        ).is_success
    context.close()

    context, page = _signed_in(chromium, web, ACCOUNTS["admin"])
    with api_client(page) as api:
        assert api.post("/api/v1/api-keys", json={"name": "sweep PACS", "scopes": ["segment"]}).is_success
    context.close()
    return SweepWorld(emails=ACCOUNTS)


@pytest.mark.parametrize("width", sorted(VIEWPORTS))
@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("role", sorted(PAGES))
def test_every_page_reads_and_works(web, browser_page, world, role, lang, width):
    page = browser_page(viewport=VIEWPORTS[width], has_touch=width < 768)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on(
        "requestfailed",  # a request the page itself stopped by navigating away is not a failure
        lambda r: "ERR_ABORTED" not in (r.failure or "") and problems.append(f"failed: {r.method} {r.url}"),
    )
    page.on(
        "response",
        lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.request.method} {r.url}"),
    )
    settled = Settle(page)
    web.sign_in(page, world.emails[role], next_path="/profile")
    page.goto(f"/set-language?lang={lang}&next=/profile")

    found = {}
    for path in PAGES[role]:
        problems.clear()
        response = page.goto(path)
        assert response.status == 200, path
        settled()
        shown = page.locator("body").inner_text()
        broken = sorted(set(re.findall(BROKEN_VALUES, shown)))
        layout = page.evaluate(LAYOUT_PROBLEMS, "body")
        web.shot(page, f"sweep-{role}-{lang}-{width}{path.replace('/', '-')}")
        if problems or broken or layout:
            found[path] = {"requests and scripts": list(problems), "shown": broken, "layout": layout}
    assert found == {}
