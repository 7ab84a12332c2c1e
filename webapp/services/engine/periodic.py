"""Periodic jobs: a registry, a database lease (one runner at a time, anywhere) and heartbeats.

A job registers itself with :func:`periodic_job` (name, the config keys of its interval and
lease, and its place in the tick); ``tasks/runtime.py`` ticks :func:`registered_jobs` in that
order, each under its own lease (:func:`run_exclusive`). ``/healthz``, the health page,
``/metrics`` and the ``job_stale`` check all judge the jobs by the same :func:`heartbeats`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun, PeriodicJob

log = logging.getLogger("backstop.jobs")


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredJob:
    """A periodic job: ``run(now, config)`` returns its summary; interval and lease come from config keys."""

    name: str
    run: Callable[[datetime, Mapping], object]
    interval_key: str
    lease_key: str
    order: int

    def interval(self, config: Mapping) -> float:
        """Seconds between runs."""
        return config[self.interval_key]

    def lease(self, config: Mapping) -> float:
        """How long one run may hold the lease."""
        return config[self.lease_key]


_jobs: dict[str, RegisteredJob] = {}


def periodic_job(name: str, *, interval: str, lease: str, order: int):
    """Decorator registering ``fn(now, config)`` as the periodic job ``name``, ticked by ascending ``order``.

    ``interval`` and ``lease`` name the config keys holding their seconds.
    """

    def decorator(fn):
        register_job(RegisteredJob(name, fn, interval, lease, order))
        return fn

    return decorator


def register_job(job: RegisteredJob) -> None:
    """Add ``job`` to the registry; registering the same function again (a module reloaded) is a no-op."""
    existing = _jobs.get(job.name)
    if existing is not None and _qualname(existing.run) != _qualname(job.run):
        raise ValueError(f"a different periodic job is already registered as {job.name!r}")
    _jobs[job.name] = job


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def registered_jobs() -> list[RegisteredJob]:
    """Every registered job in tick order."""
    return sorted(_jobs.values(), key=lambda job: (job.order, job.name))


def get_job(name: str) -> RegisteredJob:
    """The job registered as ``name`` (KeyError if none)."""
    return _jobs[name]


def run_job(job: RegisteredJob, config: Mapping, *, force: bool = False, clock=utcnow) -> JobRun | None:
    """Run ``job`` under its lease if it is due (at once, however recent its last run, with ``force``)."""
    return run_exclusive(
        job.name,
        lambda now: job.run(now, config),
        interval_seconds=0 if force else job.interval(config),
        lease_seconds=job.lease(config),
        clock=clock,
    )


# --- leases and runs ----------------------------------------------------------------------------


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
    fn: Callable[[datetime], object],
    *,
    interval_seconds: float,
    lease_seconds: float,
    clock=utcnow,
    holder: str | None = None,
) -> JobRun | None:
    """Run ``fn(now)`` if job ``name`` is due and its lease is free; record the run and heartbeat.

    What ``fn`` returns is recorded, as text, as the run's summary. Returns the run record,
    or ``None`` when the job was not due or another runner holds it.
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
    _close_abandoned_run(name, now)
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
        result = fn(now)
        summary = None if result is None else str(result)
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


def _close_abandoned_run(name: str, now: datetime) -> None:
    """Mark the previous run ``abandoned`` if it never recorded an outcome (its process died, or
    the database went away under it); we hold the lease, so it cannot still be running.

    Only the previous run can be open (each run closes its predecessor's), so this is one index
    seek on (job_name, started_at), whatever the history's length."""
    previous_start = select(PeriodicJob.last_started_at).where(PeriodicJob.name == name).scalar_subquery()
    db.session.execute(
        update(JobRun)
        .where(JobRun.job_name == name, JobRun.started_at == previous_start, JobRun.outcome == "running")
        .values(outcome="abandoned", finished_at=now, error="its runner stopped before recording an outcome")
        .execution_options(synchronize_session=False)
    )


def heartbeat_age(name: str, now: datetime | None = None) -> float | None:
    """Seconds since job ``name`` last finished a run, or ``None`` if it never has."""
    now = now or utcnow()
    last = db.session.execute(select(PeriodicJob.last_finished_at).where(PeriodicJob.name == name)).scalar()
    return None if last is None else max((now - last).total_seconds(), 0.0)


# --- heartbeats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """One job's heartbeat as judged now: its age against its own interval, its runs and last error."""

    name: str
    interval_seconds: float
    stale_after_seconds: float
    heartbeat_age_seconds: float | None
    last_finished_at: datetime | None
    fresh: bool
    runs: int
    last_error: str | None

    @property
    def stale(self) -> bool:
        """The opposite of ``fresh``: the job never finished a run or not for too long."""
        return not self.fresh

    def as_dict(self, *fields: str) -> dict:
        """The named fields (all when none are named), in that order, for a JSON answer."""
        values = asdict(self)
        return {key: values[key] for key in fields} if fields else values


def stale_after(interval_seconds: float, config: Mapping) -> float:
    """Seconds after which a job's heartbeat is stale: a multiple of its own interval."""
    return interval_seconds * config["JOB_STALE_AFTER_INTERVALS"]


def heartbeats(now: datetime, config: Mapping) -> list[Heartbeat]:
    """Every periodic job (registered or seen in the table), in tick order: age, staleness, last error.

    A job is stale when it never finished a run or its heartbeat is older than
    ``JOB_STALE_AFTER_INTERVALS`` of its own interval, so a daily job is judged in days.
    """
    rows = {row.name: row for row in db.session.execute(select(PeriodicJob)).scalars()}
    db.session.rollback()
    intervals = {job.name: job.interval(config) for job in registered_jobs()}
    for name, row in rows.items():
        intervals.setdefault(name, row.interval_seconds)
    return [_heartbeat(name, interval, rows.get(name), now, config) for name, interval in intervals.items()]


def _heartbeat(name: str, interval: float, row: PeriodicJob | None, now: datetime, config: Mapping) -> Heartbeat:
    last = row.last_finished_at if row else None
    age = None if last is None else max((now - last).total_seconds(), 0.0)
    limit = stale_after(interval, config)
    return Heartbeat(
        name=name,
        interval_seconds=interval,
        stale_after_seconds=limit,
        heartbeat_age_seconds=None if age is None else round(age, 1),
        last_finished_at=last,
        fresh=age is not None and age <= limit,
        runs=row.runs if row else 0,
        last_error=row.last_error if row else None,
    )
