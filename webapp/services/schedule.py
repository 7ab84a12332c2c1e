"""The periodic jobs: one table of name, function, interval and lease, and their heartbeats.

``tasks/runtime.py`` ticks every job in :data:`PERIODIC_JOBS` under its own database lease
(``jobs.run_exclusive``); ``/healthz`` and the health page read the heartbeats back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import PeriodicJob
from webapp.services.engine import reconciler
from webapp.services.maintenance import cleanup, requeue
from webapp.services.monitoring import checks


@dataclass(frozen=True)
class JobSpec:
    """A periodic job: ``run(config, now)`` returns a summary; intervals come from config keys."""

    name: str
    run: Callable[[Mapping, datetime], str]
    interval_key: str
    lease_key: str

    def interval(self, config: Mapping) -> float:
        """Seconds between runs."""
        return float(config[self.interval_key])

    def lease(self, config: Mapping) -> float:
        """How long one run may hold the lease."""
        return float(config[self.lease_key])


def _reconcile(config: Mapping, now: datetime) -> str:
    return str(
        reconciler.reconcile(
            now, batch_size=config["RECONCILE_BATCH_SIZE"], redeliver_after=config["REDELIVER_AFTER_SECONDS"]
        )
    )


# In tick order: the checks come last so they see this tick's heartbeats.
PERIODIC_JOBS: tuple[JobSpec, ...] = (
    JobSpec(reconciler.JOB_NAME, _reconcile, "RECONCILE_INTERVAL_SECONDS", "RECONCILE_LEASE_SECONDS"),
    JobSpec(
        "auto_requeue", requeue.auto_requeue_job, "AUTO_REQUEUE_INTERVAL_SECONDS", "AUTO_REQUEUE_LEASE_SECONDS"
    ),
    JobSpec("cleanup", cleanup.cleanup_job, "CLEANUP_INTERVAL_SECONDS", "CLEANUP_LEASE_SECONDS"),
    JobSpec(
        checks.DAILY_REPORT_JOB, checks.daily_report_job, "DAILY_REPORT_INTERVAL_SECONDS", "DAILY_REPORT_LEASE_SECONDS"
    ),
    JobSpec(checks.CHECKS_JOB, checks.checks_job, "CHECKS_INTERVAL_SECONDS", "CHECKS_LEASE_SECONDS"),
)


def job_heartbeats(config: Mapping, now: datetime | None = None) -> list[dict]:
    """Every periodic job (configured or seen in the table): heartbeat age, staleness, last error.

    A job is stale when it never finished a run or its heartbeat is older than
    ``JOB_STALE_AFTER_INTERVALS`` of its own interval, so a daily job is judged in days.
    """
    now = now or utcnow()
    rows = {row.name: row for row in db.session.execute(select(PeriodicJob)).scalars()}
    db.session.rollback()
    intervals = {spec.name: spec.interval(config) for spec in PERIODIC_JOBS}
    for name, row in rows.items():
        intervals.setdefault(name, row.interval_seconds)
    beats = []
    for name, interval in intervals.items():
        row = rows.get(name)
        last = row.last_finished_at if row else None
        age = None if last is None else max((now - last).total_seconds(), 0.0)
        limit = checks.stale_after(interval, config)
        beats.append(
            {
                "name": name,
                "interval_seconds": interval,
                "stale_after_seconds": limit,
                "heartbeat_age_seconds": None if age is None else round(age, 1),
                "last_finished_at": last,
                "fresh": age is not None and age <= limit,
                "runs": row.runs if row else 0,
                "last_error": row.last_error if row else None,
            }
        )
    return beats
