"""Periodic jobs under a database lease (one runner at a time, anywhere) with a heartbeat."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun, PeriodicJob

log = logging.getLogger("backstop.jobs")


def acquire_lease(name: str, holder: str, *, ttl_seconds: float, now: datetime, interval_seconds: float) -> bool:
    """Take the lease on job ``name`` if nobody holds a live one. Commits."""
    expires = now + timedelta(seconds=ttl_seconds)
    changed = db.session.execute(
        update(PeriodicJob)
        .where(
            PeriodicJob.name == name,
            or_(
                PeriodicJob.lease_expires_at.is_(None),
                PeriodicJob.lease_expires_at <= now,
                PeriodicJob.lease_holder == holder,
            ),
        )
        .values(lease_holder=holder, lease_expires_at=expires, interval_seconds=interval_seconds)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        db.session.commit()
        return True
    exists = db.session.execute(select(PeriodicJob.name).where(PeriodicJob.name == name)).first()
    if exists:
        db.session.rollback()
        return False
    db.session.add(
        PeriodicJob(name=name, lease_holder=holder, lease_expires_at=expires, interval_seconds=interval_seconds)
    )
    try:
        db.session.commit()
    except IntegrityError:  # another consumer created the row first: it holds the lease
        db.session.rollback()
        return False
    return True


def release_lease(name: str, holder: str) -> None:
    """Give the lease back so the next tick anywhere may run the job. Commits."""
    db.session.execute(
        update(PeriodicJob)
        .where(PeriodicJob.name == name, PeriodicJob.lease_holder == holder)
        .values(lease_holder=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def is_due(name: str, interval_seconds: float, now: datetime) -> bool:
    """True when the job has not finished a run within most of its interval."""
    last = db.session.execute(select(PeriodicJob.last_finished_at).where(PeriodicJob.name == name)).scalar()
    db.session.rollback()
    # A little slack so a tick that arrives a hair early does not skip a whole interval.
    return last is None or last <= now - timedelta(seconds=interval_seconds * 0.9)


def run_exclusive(
    name: str,
    fn: Callable[[datetime], str | None],
    *,
    interval_seconds: float,
    lease_seconds: float,
    clock=utcnow,
    holder: str | None = None,
) -> JobRun | None:
    """Run ``fn(now)`` if job ``name`` is due and its lease is free; record the run and heartbeat.

    Returns the run record, or ``None`` when the job was not due or another runner holds it.
    """
    holder = holder or f"{uuid.uuid4().hex[:12]}"
    if not is_due(name, interval_seconds, clock()):  # cheap check before contending for the lease
        return None
    if not acquire_lease(name, holder, ttl_seconds=lease_seconds, now=clock(), interval_seconds=interval_seconds):
        return None
    # Read the clock and check again only now: a runner that waited for the lock while another
    # ran the job must neither record a stale start nor run it a second time in one interval.
    now = clock()
    if not is_due(name, interval_seconds, now):
        release_lease(name, holder)
        return None
    run = JobRun(job_name=name, holder=holder, started_at=now, outcome="running")
    db.session.add(run)
    db.session.execute(
        update(PeriodicJob)
        .where(PeriodicJob.name == name)
        .values(last_started_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    run_id = run.id
    started = time.monotonic()
    summary, error = None, None
    try:
        summary = fn(now)
    except Exception as exc:  # a failing job is recorded and alarmed on, never silent
        db.session.rollback()
        error = f"{type(exc).__name__}: {exc}"[:4000]
        log.exception("periodic job %s failed", name)
    finished = clock()
    duration_ms = int((time.monotonic() - started) * 1000)
    run = db.session.get(JobRun, run_id)
    run.finished_at, run.duration_ms = finished, duration_ms
    run.outcome, run.summary, run.error = ("failed" if error else "ok"), summary, error
    db.session.execute(
        update(PeriodicJob)
        .where(PeriodicJob.name == name)
        .values(
            last_finished_at=finished,
            last_duration_ms=duration_ms,
            last_error=error,
            last_summary=summary,
            runs=PeriodicJob.runs + 1,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    release_lease(name, holder)
    return db.session.get(JobRun, run_id)


def heartbeat_age(name: str, now: datetime | None = None) -> float | None:
    """Seconds since job ``name`` last finished a run, or ``None`` if it never has."""
    now = now or utcnow()
    last = db.session.execute(select(PeriodicJob.last_finished_at).where(PeriodicJob.name == name)).scalar()
    return None if last is None else max((now - last).total_seconds(), 0.0)
