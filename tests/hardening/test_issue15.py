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


# --- finding 11: no API answer is kept by a cache --------------------------------------------------------
def test_every_api_answer_says_no_store(world):
    doctor = world.client("doctor")
    answers = [
        doctor.get("/api/v1/users/me"),  # carries the session's CSRF token
        doctor.get("/api/v1/segmentations"),
        doctor.get("/api/v1/segmentations/999999/mask.png"),
        doctor.get("/api/v1/patients/PAT-0001/trend"),
        doctor.get("/api/v1/organs"),
        world.client("anonymous").get("/api/v1/segmentations"),  # 401
        world.client("anonymous").post("/api/v1/auth/sign-in", json={"email": 1}),  # 400
    ]
    for response in answers:
        assert "no-store" in response.headers.get("cache-control", ""), (response.url, response.headers)


# --- finding 10: no patient id in the access log ------------------------------------------------------------
def test_patient_ids_never_reach_the_access_log(world, caplog):
    import logging

    import httpx

    from tests.hardening.test_security import _serve

    caplog.set_level(logging.DEBUG)
    base, stop = _serve(world.app())
    patient = "PAT-7f3a9c"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            key = {"Authorization": f"Bearer {world.keys['segment']}"}
            http.get(f"/api/v1/patients/{patient}/trend", headers=key)
            http.get(f"/api/v1/patients/{patient}/trend?organ=liver", headers=key)
            http.get(f"/api/v1/segmentations?patient_id={patient}&limit=5", headers=key)
            http.get(f"/api/v1/segmentations?organ=liver&patient_id={patient}", headers=key)
            http.get(f"/history?patient_id={patient}")
            http.get(f"/api/v1/patients/{patient}%2Fx/trend", headers=key)
    finally:
        stop()
    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert len(access) >= 6, "the access log was not captured"
    for record in caplog.records:
        if record.name.startswith(("httpx", "httpcore")):
            continue
        assert "7f3a9c" not in record.getMessage(), f"{record.name}: {record.getMessage()}"
    assert any("/api/v1/patients/" in r.getMessage() and "/trend" in r.getMessage() for r in access)


# --- finding 8: guessable passwords are refused ----------------------------------------------------------
@pytest.mark.parametrize("weak", ["aaaaaaaaaa", "1234567890", "password12", "qwertyuiop", "EMAIL", "NAME"])
def test_guessable_passwords_are_refused_with_a_clear_400(world, weak):
    import uuid

    email = f"weak-{uuid.uuid4().hex[:6]}@example.org"
    name = "Adalbert Fischermann"
    password = {"EMAIL": email, "NAME": name + "!"}.get(weak, weak)
    body = {"email": email, "password": password, "full_name": name, "role": "doctor"}
    response = world.client("anonymous").post("/api/v1/auth/register", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "weak_password" and "password" in error["message"], error
    # the same rule when a signed-in person changes theirs (their own address and name count as guesses)
    own = {"EMAIL": "researcher@example.org", "NAME": "Researcher!!"}.get(weak, weak)
    changed = world.client("researcher").post(
        "/api/v1/users/me/password",
        json={"current_password": "correct horse battery", "new_password": own},
    )
    assert changed.status_code == 400 and changed.json()["error"]["code"] == "weak_password"


def test_a_strong_password_is_accepted():
    from gateway.resources.accounts.service import check_password

    check_password("correct horse battery", user_inputs=["someone@example.org"])
    check_password("x7#Lq!v9Rz2$", user_inputs=[])


# --- finding 9: registration does not tell which addresses have accounts ---------------------------------
def test_registration_answers_the_same_for_a_new_and_a_taken_address(world):
    import uuid

    from sqlalchemy import select

    from gateway.models import User

    anonymous = world.client("anonymous")
    new = f"new-{uuid.uuid4().hex[:6]}@example.org"
    body = {"password": "correct horse battery", "full_name": "Someone Else", "role": "researcher"}
    fresh = anonymous.post("/api/v1/auth/register", json={**body, "email": new})
    taken = anonymous.post("/api/v1/auth/register", json={**body, "email": "doctor@example.org"})
    assert fresh.status_code == taken.status_code == 202, (fresh.text, taken.text)
    strip = lambda r: {**r.json(), "email": None}  # noqa: E731  (each echoes the address it was given)
    assert strip(fresh) == strip(taken) and set(fresh.json()) == {"email", "status", "message"}
    # the existing account is untouched: same name, role, password, status
    with world.session() as session:
        doctor = session.scalar(select(User).where(User.email == "doctor@example.org"))
        assert (doctor.full_name, doctor.role, doctor.status) == ("Doctor", "doctor", "active")
        assert session.scalar(select(User).where(User.email == new)).status == "pending"
    signed_in = anonymous.post(
        "/api/v1/auth/sign-in", json={"email": "doctor@example.org", "password": "correct horse battery"}
    )
    assert signed_in.status_code == 200


# --- finding 6: who the caller is is checked before an upload's body is read -------------------------------
UPLOAD_PATHS = ["/api/v1/segment", "/api/v1/evaluate", "/api/v1/evaluations", "/api/v1/datasets"]


@pytest.mark.parametrize("path", UPLOAD_PATHS)
@pytest.mark.parametrize("who", ["anonymous", "forged cookie", "forged key", "wrong scope"])
def test_uploads_are_refused_for_who_calls_before_the_body_is_read(world, path, who):
    from tests.hardening.test_security import _asgi_post

    boundary = "x"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="organ"\r\n\r\nliver\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunks = [head] + [b"\0" * (16 * 1024)] * 3840  # 60 MB, chunked (no Content-Length)
    headers = {"content-type": f"multipart/form-data; boundary={boundary}", "host": "testserver"}
    if who == "forged cookie":
        headers["cookie"] = f"{world.settings.session_cookie_name}=not-a-session"
    elif who == "forged key":
        headers["authorization"] = "Bearer msk_not_a_key"
    elif who == "wrong scope":
        headers["authorization"] = f"Bearer {world.keys['feedback']}"
    status, body, pulled = _asgi_post(world.app(), path, headers, chunks)
    assert status == (403 if who == "wrong scope" else 401), (status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert pulled == 0, f"{pulled} bytes read before the refusal"


# --- finding 13: an upload's error names the user's file, never the server's temporary file ---------------
def _zip_with(entries: int) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(entries):
            archive.writestr(f"e{i}", b"")
    return buffer.getvalue()


@pytest.mark.parametrize("content", ["not a zip", "too many entries"])
def test_dataset_errors_name_the_users_file_not_the_servers_temp_file(world, content):
    data = b"definitely not a zip" if content == "not a zip" else _zip_with(20_001)
    response = world.client("key:datasets").post(
        "/api/v1/datasets", files={"file": ("my-scans.zip", data)}, data={"organ": "liver"}
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "medseg-upload-" not in message and "/tmp" not in message, message
    assert message.startswith("my-scans.zip: "), message
    if content == "too many entries":
        assert "20001 entries" in message


# --- finding 7: sign-in throttled per client address too; a stranger cannot lock an account ---------------
def _from(world, address: str):
    return world.client("anonymous", client=(address, 40000))


def test_one_password_against_many_accounts_from_one_address_is_throttled(world):
    spray = _from(world, "198.51.100.7")
    answers = [
        spray.post("/api/v1/auth/sign-in", json={"email": f"v{i}@example.org", "password": "Winter2026!"})
        for i in range(12)
    ]
    codes = [a.status_code for a in answers]
    assert codes[0] == 401 and codes[-1] == 429, codes
    assert codes.count(401) <= world.settings.sign_in_max_failures_per_address, codes
    retry = int(answers[-1].headers["Retry-After"])
    assert 0 < retry <= world.settings.sign_in_window_s
    assert answers[-1].json()["error"]["code"] == "too_many_sign_ins"
    # another address is not affected
    other = _from(world, "198.51.100.8").post(
        "/api/v1/auth/sign-in", json={"email": "doctor@example.org", "password": "correct horse battery"}
    )
    assert other.status_code == 200, other.text


def test_a_stranger_cannot_lock_the_owner_out(world):
    stranger = _from(world, "203.0.113.66")
    for _ in range(world.settings.sign_in_max_failures + 2):
        stranger.post(
            "/api/v1/auth/sign-in", json={"email": "doctor_b@example.org", "password": "guess guess 1"}
        )
    # the stranger's address waits, even with the right password (guessing gains nothing) …
    refused = stranger.post(
        "/api/v1/auth/sign-in", json={"email": "doctor_b@example.org", "password": "correct horse battery"}
    )
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    # … but the owner, from their own address, signs in at once
    owner = _from(world, "192.0.2.10").post(
        "/api/v1/auth/sign-in", json={"email": "doctor_b@example.org", "password": "correct horse battery"}
    )
    assert owner.status_code == 200, owner.text


# --- the OpenAPI document lists what the API answers --------------------------------------------------------
def test_the_openapi_document_lists_error_statuses_and_the_organ_and_patient_id_rules(world):
    document = world.app().openapi()
    paths = document["paths"]
    for path, methods in paths.items():
        if not path.startswith("/api/"):
            continue
        for method, operation in methods.items():
            codes = set(operation["responses"])
            assert "422" not in codes or (method, path) == ("patch", "/api/v1/users/me"), (method, path)
            assert {"400", "503"} <= codes, (method, path)
            public = (method, path) in {("post", "/api/v1/auth/register"), ("post", "/api/v1/auth/sign-in")}
            assert public or {"401", "403"} <= codes, (method, path)
            assert "413" in codes or "requestBody" not in operation, (method, path)
    assert "429" in paths["/api/v1/auth/sign-in"]["post"]["responses"]
    assert paths["/api/v1/auth/register"]["post"]["responses"].keys() >= {"202", "400"}
    trend = {
        p["name"]: p["schema"] for p in paths["/api/v1/patients/{patient_id}/trend"]["get"]["parameters"]
    }
    assert trend["patient_id"]["pattern"].startswith("^[A-Za-z0-9]")
    segment = document["components"]["schemas"]["Body_segment_api_v1_segment_post"]["properties"]
    assert segment["organ"]["pattern"] == "^[a-z][a-z0-9_-]{0,62}$"
