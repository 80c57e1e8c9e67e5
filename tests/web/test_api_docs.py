"""The interactive API docs (/docs) work on a closed network: Swagger UI comes from this server (`make
assets`), renders the gateway's OpenAPI document under the docs' content-security policy, and no request
leaves the server."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_api_docs_render_from_this_server_only(web, browser_page):
    page = browser_page()
    hosts, blocked = set(), []
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    page.on("console", lambda msg: "Content Security Policy" in msg.text and blocked.append(msg.text))
    response = page.goto("/docs")
    assert response.status == 200
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("MedSeg", timeout=30_000)
    expect(page.get_by_text("/api/v1/segment").first).to_be_visible()
    assert hosts == {urlsplit(web.base_url).netloc}, hosts
    assert blocked == []
    web.shot(page, "api-docs")
