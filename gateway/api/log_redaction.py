"""Patient ids never reach the logs: the access log (uvicorn's `uvicorn.access`, which `medseg serve` sends
to the root logger) and the gateway's own records name request paths, and a path or query string may carry
a patient id (`/api/v1/patients/<id>/trend`, `?patient_id=<id>` on the API and the history page).

`redact_patient_ids(path)` replaces them with `[redacted]`; `install()` puts a filter doing that on the
access logger (idempotent: every app `create_app` builds calls it).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# /patients/<id>[/…]: the id is one path segment (percent-encoded or not), whatever it contains
_PATH_ID = re.compile(r"(/patients/)[^/?#\s\"]+", re.IGNORECASE)
# patient_id=<id> in a query string (also percent-encoded names: patient%5Fid)
_QUERY_ID = re.compile(r"((?:^|[?&;])patient(?:_|%5f)id=)[^&;#\s\"]*", re.IGNORECASE)
ACCESS_LOGGER = "uvicorn.access"


def redact_patient_ids(text: str) -> str:
    return _QUERY_ID.sub(rf"\g<1>{REDACTED}", _PATH_ID.sub(rf"\g<1>{REDACTED}", text))


class PatientIdRedactor(logging.Filter):
    """Rewrites a record's message and its string arguments (uvicorn's access record keeps the path in
    `args`), never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_patient_ids(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_patient_ids(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_patient_ids(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install() -> None:
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, PatientIdRedactor) for f in access.filters):
        access.addFilter(PatientIdRedactor())
