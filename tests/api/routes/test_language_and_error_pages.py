"""The pages' language is kept per account in the database (PATCH /api/v1/users/me `language`: en | zh, else
422) and used on every browser; signed-out visitors keep the cookie. Unknown or failing page URLs give the
styled HTML error page in the base layout (never a stack trace); API paths keep the JSON error shape."""

from __future__ import annotations

import re

import pytest
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import TooManyRequests
from gateway.api.security_headers import COMMON_HEADERS, PAGE_POLICY
from gateway.models import User
from gateway.web import pages

LANG_COOKIE = "medseg_lang"


def _html_lang(response) -> str:
    return re.search(r'<html lang="([^"]+)"', response.text).group(1)


def test_language_is_saved_to_the_account_and_used_on_any_browser(world):
    first_browser = world.client("researcher")
    assert first_browser.get("/api/v1/users/me").json()["user"]["language"] is None
    saved = first_browser.patch("/api/v1/users/me", json={"language": "zh"})
    assert saved.status_code == 200, saved.text
    assert saved.json()["language"] == "zh"
    with world.session() as session:
        assert session.get(User, world.users["researcher"].id).language == "zh"

    # a second browser: a new session, no language cookie, and it asks for English
    other_browser = world.client("researcher", headers={"Accept-Language": "en-US,en;q=0.9"})
    page = other_browser.get("/models")
    assert page.status_code == 200 and _html_lang(page) == "zh-CN"
    assert "模型管理" in page.text
    # the account wins over this browser's cookie, too
    other_browser.cookies.set(LANG_COOKIE, "en")
    assert _html_lang(other_browser.get("/models")) == "zh-CN"

    assert first_browser.patch("/api/v1/users/me", json={"language": "en"}).json()["language"] == "en"
    assert _html_lang(other_browser.get("/models")) == "en"


@pytest.mark.parametrize("language", ["fr", "ZH", "", "zh-CN", None, 7])
def test_a_language_without_pages_is_refused_with_422(world, language):
    doctor = world.client("doctor")
    response = doctor.patch("/api/v1/users/me", json={"language": language})
    if isinstance(language, int):  # not a string at all: the request's shape is wrong (400, as everywhere)
        assert response.status_code == 400, response.text
    else:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unsupported_language"
        assert "en, zh" in response.json()["error"]["message"]
    with world.session() as session:
        assert session.get(User, world.users["doctor"].id).language is None


def test_signed_out_visitors_keep_the_cookie_and_accounts_without_a_choice_fall_back_to_it(world):
    anonymous = world.client("anonymous")
    switched = anonymous.get("/set-language?lang=zh&next=/sign-in", follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/sign-in"
    assert anonymous.cookies.get(LANG_COOKIE) == "zh"
    assert _html_lang(anonymous.get("/sign-in")) == "zh-CN"
    # the set-language link never writes the account: that needs the API call with the CSRF token
    admin = world.client("admin")
    admin.get("/set-language?lang=zh&next=/", follow_redirects=False)
    with world.session() as session:
        assert session.get(User, world.users["admin"].id).language is None
    assert _html_lang(admin.get("/admin/users")) == "zh-CN"  # no account choice: this browser's cookie


def test_an_unknown_page_gets_the_html_404_page_and_the_api_keeps_json(world):
    doctor = world.client("doctor")
    page = doctor.get("/no-such-page/<script>alert(1)</script>")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-testid="error-status">404<' in page.text and "Not found" in page.text
    assert 'href="/segment"' in page.text  # the base layout's navigation, for the signed-in doctor
    assert (
        "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    )

    anonymous_page = world.client("anonymous").get("/nope", headers={"Accept-Language": "zh-CN"})
    assert anonymous_page.status_code == 404 and "页面不存在" in anonymous_page.text

    for path in ("/api/v1/no-such-thing", "/api/v1/evaluations/compare/extra/path"):
        api = doctor.get(path)
        assert api.status_code == 404 and api.headers["content-type"].startswith("application/json")
        assert api.json()["error"]["code"] == "not_found"
    wrong_method = doctor.delete("/api/v1/organs")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_bad_page_query_gets_the_html_400_page(world):
    response = world.client("doctor").get("/set-language")  # `lang` is required
    assert response.status_code == 400 and response.headers["content-type"].startswith("text/html")
    assert "This address is not valid" in response.text
    api = world.client("doctor").get("/api/v1/evaluations/compare")  # the API's 400 stays JSON
    assert api.status_code == 400 and api.json()["error"]["code"] == "invalid_input"


def test_a_failing_page_gets_the_html_500_page_without_a_stack_trace(world, monkeypatch):
    def broken(_request):
        raise RuntimeError("secret internals /var/lib/medseg")

    monkeypatch.setattr(pages, "organ_choices", broken)
    response = world.client("doctor").get("/segment")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong on the server" in response.text and 'href="/history"' in response.text
    assert "Traceback" not in response.text and "secret internals" not in response.text
    assert "RuntimeError" not in response.text
    # Starlette answers an unhandled error outside SecurityHeadersMiddleware: the page still has its headers
    for name, value in COMMON_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers.get("content-security-policy") == PAGE_POLICY


def test_a_failing_api_route_keeps_the_json_500(world, monkeypatch):
    from gateway.service import evaluations

    def broken(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(evaluations, "list_evaluations", broken)
    response = world.client("doctor").get("/api/v1/evaluations")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal" and "secret" not in response.text


def test_forbidden_pages_stay_html_403(world):
    response = world.client("doctor").get("/admin/users")
    assert response.status_code == 403 and 'data-testid="forbidden"' in response.text


def test_the_api_key_page_offers_every_scope_a_key_can_have(world):
    from gateway.security import KNOWN_SCOPES

    page = world.client("admin").get("/admin/api-keys")
    assert page.status_code == 200
    offered = re.findall(r'name="scopes" value="([a-z]+)"', page.text)
    assert offered == list(KNOWN_SCOPES)


WRONG_METHODS = [("delete", "/segment"), ("post", "/history"), ("put", "/models")]  # each page is GET-only


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_a_wrong_method_on_a_page_gets_the_html_405_page_with_its_allow_header(world, method, path):
    researcher = world.client("researcher")
    page = getattr(researcher, method)(path)
    assert page.status_code == 405 and page.headers["content-type"].startswith("text/html")
    assert 'data-testid="error-status">405<' in page.text
    # RFC 9110: a 405 names the methods the resource does allow, on the page as the API does (both GET-only)
    api = getattr(researcher, method)("/api/v1/organs")
    assert api.status_code == 405 and api.json()["error"]["code"] == "method_not_allowed"
    assert page.headers.get("allow") == api.headers.get("allow") == "GET"
    assert researcher.get(path).status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]  # the middleware's, as before


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (TooManyRequests("slow down", retry_after_s=17), 429, {"retry-after": "17"}),
        (StarletteHTTPException(503, "down", headers={"Retry-After": "5", "X-Why": "maintenance"}), 503,
         {"retry-after": "5", "x-why": "maintenance"}),
    ],
)  # fmt: skip
def test_an_error_page_keeps_the_errors_own_headers(world, monkeypatch, error, status, headers):
    def failing(_request):
        raise error

    monkeypatch.setattr(pages, "organ_choices", failing)
    page = world.client("doctor").get("/segment")
    assert page.status_code == status and page.headers["content-type"].startswith("text/html")
    assert {name: page.headers.get(name) for name in headers} == headers
    assert page.headers["cache-control"] == "no-store" and "content-security-policy" in page.headers


def test_the_favicon_is_served_where_browsers_ask_and_every_page_links_it(world):
    anonymous = world.client("anonymous")
    icon = anonymous.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml") and icon.content.startswith(b"<svg")
    page = world.client("doctor").get("/segment")
    assert page.status_code == 200
    assert '<link rel="icon" href="/static/img/favicon.svg"' in page.text
    assert anonymous.get("/static/img/favicon.svg").content == icon.content
