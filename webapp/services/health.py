"""Liveness: can we reach the database and the queue, and is every periodic job beating?"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import text

from ..domain.time import utcnow
from ..extensions import db
from .doorbell import get_doorbell
from .jobs import heartbeat_age
from .reconciler import JOB_NAME as RECONCILER
from .schedule import job_heartbeats

STALE_AFTER_INTERVALS = 3


def check(config, now: datetime | None = None) -> tuple[bool, dict]:
    """Return ``(healthy, report)``; unhealthy when the database is down or any job's heartbeat is stale.

    ``config`` is the app config (a bare number is taken as the reconciler's interval, as before).
    Every periodic job is reported under ``jobs``; the reconciler also under ``reconciler``.
    """
    if not isinstance(config, Mapping):
        config = {"RECONCILE_INTERVAL_SECONDS": float(config)}
    now = now or utcnow()
    report: dict = {"status": "ok"}
    database_ok = _database_reachable(report)
    _queue_reachable(report)
    healthy = database_ok and _heartbeats_fresh(report, config, now)
    if not healthy:
        report["status"] = "unhealthy"
    return healthy, report


def _heartbeats_fresh(report: dict, config, now: datetime) -> bool:
    """Report the reconciler's (and every job's) heartbeat; a failed read is unhealthy, not a 500."""
    try:
        return _read_heartbeats(report, config, now)
    except Exception as exc:  # e.g. a database whose schema is not migrated yet
        db.session.rollback()
        report["reconciler"] = {"heartbeat_age_seconds": None, "fresh": False, "error": type(exc).__name__,
                                "stale_after_seconds": float(config["RECONCILE_INTERVAL_SECONDS"])
                                * _stale_after_intervals(config)}
        return False


def _stale_after_intervals(config) -> float:
    """How many of its own intervals a job may miss (``JOB_STALE_AFTER_INTERVALS``), as the checks judge it."""
    return float(config.get("JOB_STALE_AFTER_INTERVALS", STALE_AFTER_INTERVALS))


def _read_heartbeats(report: dict, config, now: datetime) -> bool:
    age = heartbeat_age(RECONCILER, now)
    limit = float(config["RECONCILE_INTERVAL_SECONDS"]) * _stale_after_intervals(config)
    fresh = age is not None and age <= limit
    report["reconciler"] = {"heartbeat_age_seconds": None if age is None else round(age, 1),
                            "stale_after_seconds": limit, "fresh": fresh}
    healthy = fresh
    db.session.rollback()
    if "CHECKS_INTERVAL_SECONDS" in config:
        beats = job_heartbeats(config, now)
        report["jobs"] = {beat["name"]: {key: beat[key] for key in (
            "heartbeat_age_seconds", "interval_seconds", "stale_after_seconds", "fresh", "runs", "last_error")}
            for beat in beats}
        stale = sorted(beat["name"] for beat in beats if not beat["fresh"])
        if stale:
            report["stale_jobs"] = stale
        healthy = healthy and not stale
    return healthy


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
