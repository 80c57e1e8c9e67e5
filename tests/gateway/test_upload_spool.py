"""The upload spool budget (Settings.upload_spool_bytes, gateway/api/disk.py): multipart uploads in progress
in one gateway process may not declare more bytes together than the budget; one more is refused with 507
`insufficient_storage` and Retry-After before its body is read, and admitted again once an upload ended.
Driven through the real middleware with uploads held open mid-body, so they overlap for certain."""

from __future__ import annotations

import asyncio
import json

from common.settings import Settings
from gateway.api.disk import SPOOL_RETRY_AFTER_S, DiskGuardMiddleware

MIB = 1024 * 1024


class Spooler:
    """An app that reads the whole body (as the upload routes spool it) and answers 200."""

    def __init__(self):
        self.bodies_read = 0

    async def __call__(self, scope, receive, send):
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        self.bodies_read += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _scope(length: int | None, content_type: bytes = b"multipart/form-data; boundary=x") -> dict:
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": "POST", "path": "/api/v1/datasets", "headers": headers}


async def _upload(guard, length: int | None, release: asyncio.Event | None = None, **scope_kw) -> dict:
    """One request; its body's last chunk waits for `release` (the upload is in progress until then)."""
    sent = {"status": None, "headers": {}, "body": b""}
    chunks = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.request", "body": b""},
    ]

    async def receive():
        if len(chunks) == 1 and release is not None:
            await release.wait()
        return chunks.pop(0)

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = dict(message["headers"])
        else:
            sent["body"] += message.get("body", b"")

    await guard(_scope(length, **scope_kw), receive, send)
    return sent


def _settings(tmp_path, budget: int) -> Settings:
    return Settings(state_dir=tmp_path, min_free_disk_bytes=0, upload_spool_bytes=budget)


def test_uploads_beyond_the_budget_wait_with_507_until_one_ends(tmp_path):
    async def scenario():
        app = Spooler()
        guard = DiskGuardMiddleware(app, _settings(tmp_path, 100 * MIB))
        release = asyncio.Event()
        first = asyncio.create_task(_upload(guard, 60 * MIB, release))
        await asyncio.sleep(0)  # the first upload is admitted and reading its body
        refused = await _upload(guard, 50 * MIB)  # 60 + 50 > 100
        small = await _upload(guard, 40 * MIB)  # 60 + 40 fits beside it
        release.set()
        assert (await first)["status"] == 200
        again = await _upload(guard, 50 * MIB)  # the first has ended: room again
        return app, refused, small, again

    app, refused, small, again = asyncio.run(scenario())
    assert refused["status"] == 507
    assert refused["headers"][b"retry-after"] == str(SPOOL_RETRY_AFTER_S).encode()
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "insufficient_storage" and "upload space" in error["message"]
    assert small["status"] == 200 and again["status"] == 200
    assert app.bodies_read == 3  # the refused upload's body was never read


def test_a_body_without_length_counts_as_the_largest_upload(tmp_path):
    settings = _settings(tmp_path, 3 * 1024 * MIB)  # room for one 2 GiB dataset, not two

    async def scenario():
        guard = DiskGuardMiddleware(Spooler(), settings)
        release = asyncio.Event()
        first = asyncio.create_task(_upload(guard, None, release))
        await asyncio.sleep(0)
        second = await _upload(guard, None)
        release.set()
        return (await first), second

    first, second = asyncio.run(scenario())
    assert first["status"] == 200 and second["status"] == 507


def test_no_budget_or_no_multipart_is_not_counted(tmp_path):
    async def scenario():
        capped = DiskGuardMiddleware(Spooler(), _settings(tmp_path, 10 * MIB))
        json_body = await _upload(capped, 50 * MIB, content_type=b"application/json")
        uncapped = DiskGuardMiddleware(Spooler(), _settings(tmp_path, 0))
        return json_body, await _upload(uncapped, 50 * MIB)

    json_body, uncapped = asyncio.run(scenario())
    assert json_body["status"] == 200 and uncapped["status"] == 200
