"""Security at the HTTP edge: every /api/ operation refuses anonymous callers (enumerated from the OpenAPI
document), security headers on every kind of response, upload limits enforced before the body is read,
and no secret (API key, password, session token, CSRF token) in any log record."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gateway.api.security_headers import ALLOWED_INLINE_STYLES, COMMON_HEADERS, DOCS_PATHS
from gateway.web.pages import WEB_DIR
from tests.api.conftest import PASSWORD, small_dataset_zip

# Operations anyone may call: signing in and registering (an admin approves the account before it can
# do anything).
PUBLIC = {("POST", "/api/v1/auth/register"), ("POST", "/api/v1/auth/sign-in")}


# --- every /api/ operation refuses anonymous callers ----------------------------------------------------
def _dummy(schema: dict) -> str:
    """A value of the path parameter's type (the route must refuse the caller before it looks the id up)."""
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if schema.get("type") == "integer":
        return "1"
    if schema.get("format") == "uuid":
        return str(uuid.UUID(int=1))
    return "dummy"


def _api_operations(app) -> list[tuple[str, str, str]]:
    """(method, templated path, path with dummy parameters) of every /api/ operation in the OpenAPI doc."""
    ops = []
    for path, methods in app.openapi()["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, op in methods.items():
            concrete = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    concrete = concrete.replace("{" + p["name"] + "}", _dummy(p["schema"]))
            ops.append((method.upper(), path, concrete))
    return ops


def test_every_api_operation_refuses_anonymous_callers_before_anything_else(world):
    ops = _api_operations(world.app())
    assert len(ops) > 40 and PUBLIC <= {(m, p) for m, p, _ in ops}
    client = world.client("anonymous")
    wrong = {}
    for method, path, concrete in ops:
        # A body the route would refuse as invalid: the caller must be refused first, for who they are.
        response = client.request(method, concrete, json={"unexpected": True} if method != "GET" else None)
        if (method, path) in PUBLIC:
            if response.status_code >= 500 or response.status_code < 400:
                wrong[f"{method} {path}"] = response.status_code
            continue
        if response.status_code != 401 or response.json()["error"]["code"] != "missing_credentials":
            wrong[f"{method} {path}"] = (response.status_code, response.text[:120])
    assert not wrong, wrong


def test_a_forged_session_cookie_or_api_key_is_refused_too(world):
    forged_cookie = world.client("anonymous")
    forged_cookie.cookies.set(world.settings.session_cookie_name, "not-a-session")
    forged_key = world.client("anonymous", headers={"Authorization": "Bearer msk_not_a_key"})
    for client in (forged_cookie, forged_key):
        for method, _, concrete in _api_operations(world.app()):
            if (method, _) in PUBLIC:
                continue
            response = client.request(method, concrete)
            assert response.status_code == 401, (method, concrete, response.status_code, response.text)


# --- security headers -----------------------------------------------------------------------------------
def _responses(world) -> dict[str, httpx.Response]:
    """One response of every kind: page, redirect to sign-in, API JSON, API error, static file, 404, 413."""
    anonymous, doctor = world.client("anonymous"), world.client("doctor")
    small = world.settings.model_copy(update={"max_dataset_upload_bytes": 100})
    return {
        "sign-in page": anonymous.get("/sign-in"),
        "page redirect": anonymous.get("/", follow_redirects=False),
        "signed-in page": doctor.get("/"),
        "API JSON": doctor.get("/api/v1/organs"),
        "API 401": anonymous.get("/api/v1/organs"),
        "API 400": doctor.post("/api/v1/segment", data={}),
        "static file": anonymous.get("/static/js/app.js"),
        "404": anonymous.get("/no/such/page"),
        "413 from the body limit": world.client("doctor", settings=small).post(
            "/api/v1/datasets", files={"file": ("a.zip", b"\0" * 200_000)}, data={"organ": "liver"}
        ),
        "healthz": anonymous.get("/healthz"),
        "docs": anonymous.get("/docs"),
    }


def test_every_response_carries_the_security_headers(world):
    for kind, response in _responses(world).items():
        assert response.status_code < 500, (kind, response.status_code)
        for name, value in COMMON_HEADERS.items():
            assert response.headers.get(name) == value, (kind, name, response.headers.get(name))
        policy = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, (kind, policy)
        if not response.url.path.startswith(DOCS_PATHS):
            # the pages: scripts and styles from this origin only, nothing inline but one vendor rule
            styles = " ".join(["style-src 'self'", *ALLOWED_INLINE_STYLES]) + ";"
            assert "script-src 'self';" in policy and styles in policy, (kind, policy)
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (kind, policy)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER_OR_STYLE = re.compile(r"<[^>]*\s(on[a-z]+|style)\s*=", re.I)


@pytest.mark.parametrize("template", sorted(p.name for p in (WEB_DIR / "templates").glob("*.html")))
def test_templates_have_no_inline_script_or_style_the_policy_would_block(template):
    text = (Path(WEB_DIR) / "templates" / template).read_text()
    assert not INLINE_SCRIPT.search(text), "move the script to gateway/web/static/js"
    assert not INLINE_HANDLER_OR_STYLE.search(text), "use a static script / a CSS class instead"
    assert "<style" not in text.lower(), "move the style to gateway/web/static/css/app.css"
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "assets come from this origin, not a CDN"


# --- upload limits before the body is read ----------------------------------------------------------------
def _asgi_post(app, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST through the ASGI app directly; `chunks` are offered one receive() at a time (more_body until the
    last). Returns (status, JSON body, bytes the app pulled from the client)."""
    pulled, sent, status, body = 0, iter(chunks), {}, bytearray()
    remaining = len(chunks)

    async def receive():
        nonlocal pulled, remaining
        chunk = next(sent, None)
        if chunk is None:
            await asyncio.sleep(3600)  # the client has nothing more; the app must not wait for it
        remaining -= 1
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": remaining > 0}

    async def send(message):
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    import json

    return status["code"], json.loads(bytes(body)), pulled


def _doctor_headers(world, content_type: str, **extra) -> dict[str, str]:
    client = world.client("doctor")
    cookie = f"{world.settings.session_cookie_name}={client.cookies[world.settings.session_cookie_name]}"
    return {"cookie": cookie, "x-csrf-token": client.headers["X-CSRF-Token"], "content-type": content_type,
            "host": "testserver", **extra}  # fmt: skip


LIMITED = {"max_upload_bytes": 4096, "max_dataset_upload_bytes": 4096, "max_request_bytes": 8192}


@pytest.mark.parametrize("path", ["/api/v1/segment", "/api/v1/datasets", "/api/v1/evaluate"])
def test_declared_content_length_over_the_limit_is_413_without_reading_the_body(world, path):
    app = world.app(world.settings.model_copy(update=LIMITED))
    headers = _doctor_headers(world, "multipart/form-data; boundary=x", **{"content-length": str(10**9)})
    status, body, pulled = _asgi_post(app, path, headers, [b"--x\r\n" + b"\0" * 1000])
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert "limit" in body["error"]["message"]
    assert pulled == 0  # not a byte read


@pytest.mark.parametrize("path", ["/api/v1/segment", "/api/v1/datasets", "/api/v1/evaluate"])
def test_chunked_body_over_the_limit_is_cut_off_at_the_limit(world, path):
    """No Content-Length (chunked): the body is read only until it passes the limit, then refused."""
    settings = world.settings.model_copy(update=LIMITED)
    app = world.app(settings)
    boundary = "x"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="organ"\r\n\r\nliver\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = 16 * 1024
    chunks = [head] + [b"\0" * chunk] * 2000  # ~32 MB offered, far beyond every limit here
    headers = _doctor_headers(world, f"multipart/form-data; boundary={boundary}")
    status, body, pulled = _asgi_post(app, path, headers, chunks)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    limit = (
        settings.max_dataset_upload_bytes if path == "/api/v1/datasets" else settings.max_upload_bytes
    ) + 64 * 1024  # FORM_OVERHEAD_BYTES
    if path == "/api/v1/evaluate":
        limit = settings.max_request_bytes
    assert pulled <= limit + chunk + len(head), (pulled, limit)  # stopped within one chunk of the limit


# --- secrets never logged --------------------------------------------------------------------------------
def _serve(app):
    """The app under uvicorn as `medseg serve` runs it (log_config=None: uvicorn's error and access logs
    go to the root logger), on a free port; returns (base URL, stop())."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="secrets-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def test_secrets_never_appear_in_any_log_record(world, caplog):
    caplog.set_level(logging.DEBUG)
    with world.session() as session:
        from gateway.security import create_api_key

        _, raw_key = create_api_key(session, "log-probe", ["segment", "datasets"])
    base, stop = _serve(world.app())
    secrets = {"api key": raw_key, "password": PASSWORD, "wrong password": "wrong-" + PASSWORD}
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            key = {"Authorization": f"Bearer {raw_key}"}
            http.get("/api/v1/organs", headers=key)
            http.post("/api/v1/datasets", headers=key, files={"file": ("s.zip", small_dataset_zip(1))},
                      data={"organ": "liver"})  # fmt: skip
            http.post("/api/v1/segment", headers=key, files={"file": ("x.png", b"not an image")},
                      data={"organ": "liver"})  # fmt: skip
            http.get("/api/v1/organs", headers={"Authorization": f"Bearer {raw_key}x"})  # a wrong key
            doctor = "doctor@example.org"
            http.post("/api/v1/auth/sign-in", json={"email": doctor, "password": secrets["wrong password"]})
            signed_in = http.post("/api/v1/auth/sign-in", json={"email": doctor, "password": PASSWORD})
            assert signed_in.status_code == 200, signed_in.text
            session_token = signed_in.cookies[world.settings.session_cookie_name]
            secrets["session"], secrets["csrf"] = session_token, signed_in.json()["csrf_token"]
            assert http.cookies[world.settings.session_cookie_name] == session_token  # sent from now on
            assert http.get("/api/v1/users/me").status_code == 200
            http.get("/")
            csrf = {"X-CSRF-Token": secrets["csrf"]}
            too_short = {"current_password": PASSWORD, "new_password": "x"}  # refused, after checking both
            http.post("/api/v1/users/me/password", headers=csrf, json=too_short)
            assert http.post("/api/v1/auth/sign-out", headers=csrf).status_code == 204
    finally:
        stop()
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # the test's client
    assert any(r.name == "uvicorn.access" for r in ours), "the access log was not captured"
    for record in ours:
        text = record.getMessage() + (record.exc_text or "") + repr(getattr(record, "__dict__", {}))
        for what, secret in secrets.items():
            assert secret not in text, f"{what} logged by {record.name}: {text[:300]}"
