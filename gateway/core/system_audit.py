"""Audit entries written by the platform's own background programs (supervisord's restart counter, the backup
scheduler) rather than a request: a connection of their own, no hospital (platform admins read them), and a
database that cannot be written is logged, never fatal to the program."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from common.errors import MedSegError
from gateway.core.db import make_engine, session_scope
from gateway.models import audit

logger = logging.getLogger(__name__)


def system_audit(settings, actor: str, action: str, target: str, detail: dict) -> bool:
    """Append one entry of the platform's; False (and a warning) when the database could not take it."""
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with session_scope(engine) as session:
            audit(session, actor, action, target, detail, hospital=None)
        return True
    except (SQLAlchemyError, MedSegError) as exc:
        logger.warning("%s of %s not in the audit log: %s", action, target, exc)
        return False
    finally:
        engine.dispose()
