"""Issue 15 (security part): each finding reproduced as a test that failed before its fix."""

from __future__ import annotations

import pytest

from gateway.web.pages import safe_next


# --- finding 3: no open redirect after sign-in -----------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example/", "/\t/evil.example/", "/\n/evil.example/", "/\r/evil.example/",
        "//evil.example/", "/\\evil.example/", "\\/evil.example", "http://evil.example/",
        "https:evil.example", "javascript:alert(1)", " /\t/evil.example", "/%0a/evil.example/",
        "/%0d/evil.example/", "/\x00/evil.example", "/%2f/evil.example", "evil.example",
    ],
)  # fmt: skip
def test_sign_in_next_accepts_only_same_origin_paths(world, target):
    from urllib.parse import unquote

    for raw in {target, unquote(target)}:
        assert safe_next(raw) == "/", raw
    client = world.client("anonymous", follow_redirects=False)
    response = client.get("/set-language", params={"lang": "en", "next": unquote(target)})
    assert response.status_code == 303 and response.headers["location"] == "/"
    page = client.get("/sign-in", params={"next": unquote(target)})
    assert 'data-next=""' in page.text  # the page's script goes to data-next after signing in


@pytest.mark.parametrize("target", ["/segment", "/history?patient_id=PAT-1", "/admin/users#x", "/a/b/"])
def test_sign_in_next_keeps_paths_on_this_site(target):
    assert safe_next(target) == target
