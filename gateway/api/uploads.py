"""Request-size limits for uploads: refused from Content-Length before the body is read, and capped while
streaming (a chunked or lying client cannot make us buffer more than the limit)."""

from __future__ import annotations

import json

from fastapi import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import PayloadTooLarge
from gateway.service.dataplane import Upload

# Multipart framing and the small form fields around one file.
FORM_OVERHEAD_BYTES = 64 * 1024


def read_upload(file: UploadFile, limit: int) -> Upload:
    """The part's bytes, refusing more than `limit` without reading further."""
    name = file.filename or "upload"
    if file.size is not None and file.size > limit:
        raise PayloadTooLarge(
            f"file {name!r} is {file.size} bytes; the limit is {limit} bytes per image",
            code="file_too_large",
            params={"name": name, "limit": limit},
        )
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"file {name!r} is larger than the limit of {limit} bytes per image",
            code="file_too_large",
            params={"name": name, "limit": limit},
        )
    return Upload(name, data)


class BodyLimitMiddleware:
    """Caps request bodies: `limits` maps a path to its cap; other paths get `default`."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None):
        self.app = app
        self.default = default
        self.limits = limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False  # the server rejects a malformed Content-Length itself
            if too_big:
                await _send_413(
                    send, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes"
                )
                return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through FastAPI's body parsing unchanged (anything else
                    # would become a generic 400) and our handler renders it as JSON.
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, capped_receive, send)


async def _send_413(send: Send, message: str) -> None:
    body = json.dumps({"error": {"code": "payload_too_large", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
