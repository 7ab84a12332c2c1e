"""Liveness: can we reach the database and the queue, and is every periodic job beating?"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import text

from webapp.extensions import db
from webapp.services.engine import consumers, periodic
from webapp.services.engine.doorbell import get_doorbell
from webapp.services.engine.reconciler import JOB_NAME as RECONCILER

JOB_FIELDS = ("heartbeat_age_seconds", "interval_seconds", "stale_after_seconds", "fresh", "runs", "last_error")


def check(now: datetime, config: Mapping) -> tuple[bool, dict]:
    """Return ``(healthy, report)``; unhealthy when the database is down or any job's heartbeat is stale.

    Every periodic job is reported under ``jobs``; the reconciler also under ``reconciler``.
    """
    report: dict = {"status": "ok"}
    database_ok = _database_reachable(report)
    _queue_reachable(report)
    healthy = database_ok and _heartbeats_fresh(report, now, config)
    if not healthy:
        report["status"] = "unhealthy"
    return healthy, report


def public_view(report: dict) -> dict:
    """What anyone may see: the status, whether each part is up and each job fresh — no errors, ages or counts.

    Job errors can quote SQL with customer data; the full report is for admins only
    (``GET /api/admin/liveness`` and the health page).
    """
    view: dict = {"status": report["status"]}
    for part in ("database", "queue"):
        if part in report:
            view[part] = {"ok": bool(report[part].get("ok"))}
    if "reconciler" in report:
        view["reconciler"] = {"fresh": bool(report["reconciler"].get("fresh"))}
    if "jobs" in report:
        view["jobs"] = {name: {"fresh": bool(job.get("fresh"))} for name, job in report["jobs"].items()}
    if "stale_jobs" in report:
        view["stale_jobs"] = list(report["stale_jobs"])
    return view


def _heartbeats_fresh(report: dict, now: datetime, config: Mapping) -> bool:
    """Report every job's heartbeat; a failed read is unhealthy, not a 500."""
    try:
        return _read_heartbeats(report, now, config)
    except Exception as exc:  # e.g. a database whose schema is not migrated yet
        db.session.rollback()
        report["reconciler"] = {
            "heartbeat_age_seconds": None,
            "fresh": False,
            "error": type(exc).__name__,
            "stale_after_seconds": periodic.stale_after(config["RECONCILE_INTERVAL_SECONDS"], config),
        }
        return False


def _read_heartbeats(report: dict, now: datetime, config: Mapping) -> bool:
    beats = {beat.name: beat for beat in periodic.heartbeats(now, config)}
    report["jobs"] = {name: beat.as_dict(*JOB_FIELDS) for name, beat in beats.items()}
    report["reconciler"] = beats[RECONCILER].as_dict("heartbeat_age_seconds", "stale_after_seconds", "fresh")
    stale = sorted(name for name, beat in beats.items() if beat.stale)
    if stale:
        report["stale_jobs"] = stale
    return not stale


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


def consumer_report(now: datetime, config: Mapping) -> dict:
    """Admins only: every consumer process with its status (live, lost, stopped) and what it runs.

    Never part of the public ``/healthz``: host names, pids and operation ids are internal.
    """
    listed = consumers.list_consumers(now, config)
    return {
        "lost_after_seconds": config["CONSUMER_LOST_AFTER_SECONDS"],
        "counts": {status: sum(1 for c in listed if c.status == status) for status in ("live", "lost", "stopped")},
        "consumers": [consumer.as_dict() for consumer in listed],
    }
