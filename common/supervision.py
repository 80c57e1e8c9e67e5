"""What the local stack's supervisor records that the product reads: each program's restart count.

`python -m tools.stack` runs every program under supervisord; its event listener (`tools.stack
count-restarts`) counts each automatic restart (a start after the program exited or failed to start) into
`<state>/supervisor/restarts.json`, `{"<program>": <restarts>}`, every program of the process table with 0
from supervisord's start, and appends each restart to the audit log (`process.restarted`). The gateway
exports the counts on `/metrics` (`medseg_process_restarts_total{program=…}`, gateway/metrics.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESTARTS_FILE = "restarts.json"
AUDIT_ACTOR = "system:supervisord"  # the audit log's actor of a restart (no hospital: the platform's)
AUDIT_ACTION = "process.restarted"


def supervisor_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "supervisor"


def restarts_path(state_dir: str | Path) -> Path:
    return supervisor_dir(state_dir) / RESTARTS_FILE


def read_restarts(state_dir: str | Path) -> dict[str, int]:
    """Program → automatic restarts since supervisord started; {} when no supervised stack runs here."""
    try:
        counts = json.loads(restarts_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}


def write_restarts(state_dir: str | Path, counts: dict[str, int]) -> None:
    """Replace the counts at once (readers never see half a file)."""
    path = restarts_path(state_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(counts, sort_keys=True))
    tmp.replace(path)
