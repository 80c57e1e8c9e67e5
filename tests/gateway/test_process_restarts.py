"""Restart counts of the local stack's programs (issue 22): what supervisord's event listener records
(common/supervision.py) is on the gateway's /metrics, and each restart is an audit entry of the platform's.
The restarts themselves, on the real supervised stack: tests/gateway/test_stack_supervised.py."""

from __future__ import annotations

import re

from sqlalchemy import select

from common import supervision
from common.settings import Settings
from gateway import metrics
from gateway.core.db import make_engine, run_migrations, session_scope
from gateway.models import AuditLog
from tools import stack


def _restarts_in(exposition: bytes) -> dict[str, float]:
    found = re.findall(rb'^medseg_process_restarts_total\{program="([^"]+)"\} (\S+)$', exposition, re.M)
    return {name.decode(): float(value) for name, value in found}


def test_metrics_export_each_programs_restarts_when_scraped(tmp_path):
    before = metrics.PROCESS_RESTARTS.state_dir
    try:
        metrics.track_restarts(tmp_path)
        assert _restarts_in(metrics.render()) == {}  # no supervised stack here: no series
        supervision.supervisor_dir(tmp_path).mkdir()
        supervision.write_restarts(tmp_path, {"gateway": 0, "torchserve-liver": 2})
        assert _restarts_in(metrics.render()) == {"gateway": 0.0, "torchserve-liver": 2.0}
        supervision.write_restarts(tmp_path, {"gateway": 1, "torchserve-liver": 2})  # read again per scrape
        assert _restarts_in(metrics.render())["gateway"] == 1.0
        supervision.restarts_path(tmp_path).write_text("{not json")  # a torn file reads as none
        assert _restarts_in(metrics.render()) == {}
    finally:
        metrics.track_restarts(before)


def test_a_restart_is_an_audit_entry_of_the_platform(tmp_path):
    settings = Settings(state_dir=tmp_path)
    run_migrations(settings.sqlalchemy_url)
    stack.audit_restart(settings, "torchserve-liver", 3, "EXITED")
    engine = make_engine(settings.sqlalchemy_url)
    with session_scope(engine) as session:
        (row,) = session.scalars(select(AuditLog).where(AuditLog.action == "process.restarted"))
        assert (row.actor, row.target, row.hospital) == ("system:supervisord", "torchserve-liver", None)
        assert row.detail == {"restarts": 3, "after": "EXITED"}
    engine.dispose()


def test_an_unwritable_audit_log_does_not_stop_the_count(tmp_path, capsys):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'missing' / 'medseg.db'}")
    stack.audit_restart(settings, "gateway", 1, "BACKOFF")  # no such database: said, not raised
    assert "restart of gateway not in the audit log" in capsys.readouterr().err
