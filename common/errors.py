"""Transport-neutral errors. Deep code raises these; each edge maps them once
(FastAPI exception handlers → HTTP status + {"error": {...}}, gRPC interceptor → status code)."""

from __future__ import annotations


class MedSegError(Exception):
    """Base class: `code` is the stable machine-readable error code; `http_status` / `grpc_code` map it.

    `params` are the values the message names (a file name, a limit), so a client that words the error in
    its own language by `code` can name them too (the web pages do: gateway/web/i18n.py `err.<code>`)."""

    code = "internal"
    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, params: dict | None = None):
        super().__init__(message)
        self.message = message
        self.params = dict(params or {})
        if code:
            self.code = code


class InvalidInput(MedSegError):
    code, http_status, grpc_code = "invalid_input", 400, "INVALID_ARGUMENT"


class Unauthenticated(MedSegError):
    code, http_status, grpc_code = "unauthenticated", 401, "UNAUTHENTICATED"


class Forbidden(MedSegError):
    code, http_status, grpc_code = "forbidden", 403, "PERMISSION_DENIED"


class NotFound(MedSegError):
    code, http_status, grpc_code = "not_found", 404, "NOT_FOUND"


class Conflict(MedSegError):
    """409: the request contradicts what is stored. Over gRPC a duplicate is ALREADY_EXISTS; anything else
    (a retired version, a finished job, a refused promotion) is FAILED_PRECONDITION."""

    code, http_status = "conflict", 409
    DUPLICATES = frozenset({"version_exists", "email_taken"})

    @property
    def grpc_code(self) -> str:
        return "ALREADY_EXISTS" if self.code in self.DUPLICATES else "FAILED_PRECONDITION"


class PayloadTooLarge(MedSegError):
    code, http_status, grpc_code = "payload_too_large", 413, "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(MedSegError):
    code, http_status, grpc_code = "unsupported_media_type", 415, "INVALID_ARGUMENT"


class TooManyRequests(MedSegError):
    """The caller must wait (e.g. sign-in throttled after failures); `retry_after_s` says how long."""

    code, http_status, grpc_code = "too_many_requests", 429, "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: int = 60, code: str | None = None, params=None):
        super().__init__(message, code=code, params={"seconds": retry_after_s, **(params or {})})
        self.retry_after_s = retry_after_s


class InsufficientStorage(MedSegError):
    """507: the server's disk is nearly full, so it takes no new uploads (settings.min_free_disk_bytes)."""

    code, http_status, grpc_code = "insufficient_storage", 507, "RESOURCE_EXHAUSTED"


class ServiceUnavailable(MedSegError):
    """A dependency (organ server, object store, database) is down or timed out."""

    code, http_status, grpc_code = "service_unavailable", 503, "UNAVAILABLE"


def http_headers(exc: Exception) -> dict[str, str] | None:
    """The headers an HTTP answer to `exc` carries whether the edge answers in JSON (API) or HTML (pages):
    an HTTPException's own (405's `Allow`, required by RFC 9110) and a wait's `Retry-After`."""
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after:
        return {"Retry-After": str(retry_after)}
    return getattr(exc, "headers", None)  # starlette's HTTPException: None when it has none
