"""A list filled after a fetch while an earlier fill of it is still on its way (the page's own first load
racing a change of organ): the version and dataset lists hold each entry once. The full suite found the
feedback page's version list with every version twice (two loads each cleared the
list, then both appended)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.helpers import api_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _first_call_slow(page, pattern: str) -> None:
    """Hold the page's first request matching `pattern` until a later one has been answered."""
    held: list = []

    def route(r):
        if not held:
            held.append(r)  # the first: held
            return
        first, held[0] = held[0], None  # taken before continuing: another request's handler may run meanwhile
        r.continue_()
        if first is not None:
            first.continue_()  # released once; later requests pass

    page.route(pattern, route)


@pytest.mark.parametrize(
    ("path", "pattern", "options"),
    [
        ("/feedback", "**/api/v1/models/*/versions", "#version option"),
        ("/model-test", "**/api/v1/models/*/versions", "#version option"),
        ("/model-test", "**/api/v1/datasets?organ=*", "#dataset option"),
    ],
)
def test_two_overlapping_loads_list_each_entry_once(web, browser_page, path, pattern, options):
    page = browser_page()
    web.sign_in(page, "doctor", next_path="/profile")
    with api_client(page) as api:
        versions = api.get("/api/v1/models/liver/versions").json()["versions"]
        datasets = api.get("/api/v1/datasets?organ=liver").json()["datasets"]
    _first_call_slow(page, pattern)
    page.goto(path)
    organ = page.locator("#organ")
    organ.select_option("cells")  # a second load while the first is held
    organ.select_option("liver")  # and a third, which releases the first
    expected = len(versions) if "version" in options else len(datasets)
    blank = 1 if path == "/model-test" else 0  # the model test's lists start with "current" / "none"
    expect(page.locator(options)).to_have_count(expected + blank)
