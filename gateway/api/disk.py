"""Bounded disk: new uploads are refused with 507 `insufficient_storage` while the file system holding the
state dir has less free space than `Settings.min_free_disk_bytes`, before the body is read; /readyz names it
(component `disk`). Reads and everything else go on, so people can still see and export their results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import InsufficientStorage
from common.settings import Settings

MIB = 1024 * 1024
UPLOAD_METHODS = frozenset({"POST", "PUT", "PATCH"})


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) of the file system holding `path`, or its nearest existing parent."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_state(settings: Settings) -> str:
    """ "ok", else why not: how much is free where, and the floor."""
    floor = settings.min_free_disk_bytes
    if floor <= 0:
        return "ok"
    free = free_bytes(settings.state_dir)
    if free >= floor:
        return "ok"
    return f"low: {free // MIB} MiB free under {settings.state_dir}, below the {floor // MIB} MiB floor"


class DiskGuardMiddleware:
    """Refuses multipart uploads under /api/ with 507 while the disk is low (see the module's doc)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in UPLOAD_METHODS
            and scope["path"].startswith("/api/")
        ):
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if content_type.startswith(b"multipart/form-data"):
                state = disk_state(self.settings)
                if state != "ok":
                    await _send_507(
                        send, f"the server's disk is nearly full ({state}); no new uploads for now"
                    )
                    return
        await self.app(scope, receive, send)


async def _send_507(send: Send, message: str) -> None:
    error = InsufficientStorage(message)
    body = json.dumps({"error": {"code": error.code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": error.http_status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
