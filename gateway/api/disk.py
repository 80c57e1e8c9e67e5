"""Bounded disk: new uploads are refused with 507 `insufficient_storage` while the file system holding the
state dir has less free space than `Settings.min_free_disk_bytes`, before the body is read; /readyz names it
(component `disk`). Reads and everything else go on, so people can still see and export their results.

And a bounded spool: with `Settings.upload_spool_bytes`, the multipart uploads one process takes at once may
not declare more bytes together than that (a Kubernetes emptyDir evicts the pod when it overflows); one more
is refused with 507 and `Retry-After` before its body is read."""

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
        self.spooling = 0  # bytes the uploads in progress declared (one event loop: no lock needed)

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
                budget = self.settings.upload_spool_bytes
                if budget > 0:
                    await self._within_spool(budget, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _within_spool(self, budget: int, scope: Scope, receive: Receive, send: Send) -> None:
        size = _declared_length(scope)
        if size is None:  # chunked: it may grow to the largest upload the gateway accepts
            size = max(self.settings.max_dataset_upload_bytes, self.settings.study_max_bytes)
        if self.spooling + size > budget:
            await _send_507(
                send,
                f"uploads in progress fill this server's upload space ({self.spooling // MIB} of "
                f"{budget // MIB} MiB, this one {size // MIB} MiB); try again shortly",
                retry_after_s=SPOOL_RETRY_AFTER_S,
            )
            return
        self.spooling += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.spooling -= size


SPOOL_RETRY_AFTER_S = 30


def _declared_length(scope: Scope) -> int | None:
    declared = dict(scope["headers"]).get(b"content-length")
    try:
        return int(declared) if declared is not None else None
    except ValueError:
        return None


async def _send_507(send: Send, message: str, retry_after_s: int | None = None) -> None:
    error = InsufficientStorage(message)
    body = json.dumps({"error": {"code": error.code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    start = {"type": "http.response.start", "status": error.http_status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
