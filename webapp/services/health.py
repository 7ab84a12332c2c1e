"""Liveness: can we reach the database and the queue, and is the reconciler beating?"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from ..domain.time import utcnow
from ..extensions import db
from .doorbell import get_doorbell
from .jobs import heartbeat_age
from .reconciler import JOB_NAME as RECONCILER

STALE_AFTER_INTERVALS = 3


def check(reconcile_interval: float, now: datetime | None = None) -> tuple[bool, dict]:
    """Return ``(healthy, report)``; unhealthy when the database is down or the heartbeat stale."""
    now = now or utcnow()
    report: dict = {"status": "ok"}
    database_ok = _database_reachable(report)
    _queue_reachable(report)
    healthy = database_ok
    if database_ok:
        age = heartbeat_age(RECONCILER, now)
        limit = reconcile_interval * STALE_AFTER_INTERVALS
        fresh = age is not None and age <= limit
        report["reconciler"] = {"heartbeat_age_seconds": None if age is None else round(age, 1),
                                "stale_after_seconds": limit, "fresh": fresh}
        healthy = healthy and fresh
        db.session.rollback()
    if not healthy:
        report["status"] = "unhealthy"
    return healthy, report


def _database_reachable(report: dict) -> bool:
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception as exc:
        db.session.rollback()
        report["database"] = {"ok": False, "error": type(exc).__name__}
        return False
    report["database"] = {"ok": True}
    return True


def _queue_reachable(report: dict) -> bool:
    try:
        depth = get_doorbell().depth()
    except Exception as exc:
        report["queue"] = {"ok": False, "error": type(exc).__name__}
        return False
    report["queue"] = {"ok": True, **depth}
    return True
