"""Cleanup: retention in bounded batches.

Cleanup deletes in batches of ``CLEANUP_BATCH_SIZE``, each batch its own short transaction,
so no write lock is held for long (on SQLite every transaction holds *the* write lock).
Deleting an operation removes its attempts, email-log rows and auto-requeue mark through
``ON DELETE CASCADE``; alerts and Stripe events that point at it keep their row (SET NULL).
Before a batch is deleted its counts are added to ``metric_rollups`` so /metrics counters
never go backwards. It also forgets the email rate-limit rows of recipients idle for an hour.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text, tuple_, update

from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import (
    AdminSession,
    Alert,
    AuditEntry,
    BulkJob,
    BulkJobItem,
    FailedLogin,
    FailedLoginAddress,
    JobRun,
    MaintenanceCursor,
    Operation,
    StripeEvent,
)
from webapp.services.email import ratelimit
from webapp.services.engine import consumers
from webapp.services.engine.periodic import periodic_job
from webapp.services.engine.registry import KINDS
from webapp.services.monitoring.rollups import roll_up_operations

log = logging.getLogger("backstop.maintenance")

# Stripe events whose processing is settled; a failed or pending event keeps its body for replay.
SETTLED_EVENT_STATES = ("processed", "ignored")
# Bulk jobs that will make no more progress (``BulkJob.finished``).
BULK_FINISHED_STATES = ("done", "cancelled", "failed")
STRIPE_CURSOR = "stripe_event_bodies"
# Webhook operations that succeeded after the body walk passed their (then unsettled) event.
STRIPE_LATE_CURSOR = "stripe_event_bodies_late"


@dataclass
class CleanupReport:
    """What one cleanup run removed, and how long each batch (transaction) took."""

    succeeded: int = 0
    resolved_dead: int = 0
    stripe_bodies: int = 0
    job_runs: int = 0
    alerts: int = 0
    failed_logins: int = 0
    admin_sessions: int = 0
    bulk_jobs: int = 0
    rate_limits: int = 0
    consumers: int = 0
    audit_entries: int = 0
    batch_ms: list[float] = field(default_factory=list)
    complete: bool = True

    @property
    def max_batch_ms(self) -> float:
        """The longest batch, in milliseconds."""
        return max(self.batch_ms, default=0.0)

    def __str__(self) -> str:
        return (
            f"succeeded={self.succeeded} resolved_dead={self.resolved_dead} stripe_bodies={self.stripe_bodies} "
            f"job_runs={self.job_runs} alerts={self.alerts} failed_logins={self.failed_logins} "
            f"admin_sessions={self.admin_sessions} bulk_jobs={self.bulk_jobs} rate_limits={self.rate_limits} "
            f"consumers={self.consumers} "
            f"audit_entries={self.audit_entries} "
            f"batches={len(self.batch_ms)} "
            f"max_batch_ms={self.max_batch_ms:.1f}" + ("" if self.complete else " (time budget reached)")
        )


@contextmanager
def _no_collection_while_locked():
    """Keep Python's cyclic garbage collector out of a lock-holding batch.

    A full collection in a large process takes 100 ms or more; landing inside a batch it
    would hold the write lock that long. Postponed, it runs in the pause between batches.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Batches:
    """Runs batch functions until each reports nothing left, timing every batch, within a time budget."""

    def __init__(self, report: CleanupReport, budget_seconds: float, pause_seconds: float):
        self.report = report
        self.deadline = time.monotonic() + budget_seconds
        self.pause_seconds = pause_seconds

    def drain(self, batch) -> int:
        total = 0
        while True:
            if time.monotonic() >= self.deadline:
                self.report.complete = False
                return total
            try:
                # Open the transaction first: on SQLite that waits for the write lock, and the
                # timing below is then the time the batch *holds* it.
                db.session.execute(text("SELECT 1"))
                with _no_collection_while_locked():
                    started = time.perf_counter()
                    done = batch()
                    held = time.perf_counter() - started
            except Exception:
                db.session.rollback()
                raise
            self.report.batch_ms.append(held * 1000)
            total += done
            if not done:
                return total
            # Let writers waiting on the lock in before the next batch takes it again: rest at
            # least as long as the batch held the lock, so cleanup never takes more than half
            # of the database's write time (SQLite's busy handler polls, it does not queue).
            time.sleep(max(self.pause_seconds, held))


@periodic_job("cleanup", interval="CLEANUP_INTERVAL_SECONDS", lease="CLEANUP_LEASE_SECONDS", order=20)
def cleanup(now: datetime, config: Mapping) -> CleanupReport:
    """Delete or trim old records in bounded batches; returns (and logs) counts and per-batch timings."""
    size = config["CLEANUP_BATCH_SIZE"]
    report = CleanupReport()
    batches = _Batches(report, config["CLEANUP_MAX_SECONDS"], config["CLEANUP_BATCH_PAUSE_SECONDS"])
    succeeded_cutoff = now - timedelta(days=config["RETENTION_SUCCEEDED_DAYS"])
    dead_cutoff = now - timedelta(days=config["RETENTION_RESOLVED_DEAD_DAYS"])
    for kind in KINDS:  # one kind at a time so the (kind, succeeded_at) index serves the query
        report.succeeded += batches.drain(
            lambda kind=kind: _delete_operations(
                select(Operation.id).where(
                    Operation.kind == kind,
                    Operation.succeeded_at < succeeded_cutoff,
                    Operation.state == State.SUCCEEDED.value,
                ),
                size,
            )
        )
    report.resolved_dead += batches.drain(
        lambda: _delete_operations(
            select(Operation.id).where(Operation.state == State.DEAD.value, Operation.resolved_at < dead_cutoff), size
        )
    )
    body_cutoff = now - timedelta(days=config["RETENTION_STRIPE_BODY_DAYS"])
    report.stripe_bodies += batches.drain(lambda: _trim_stripe_bodies(body_cutoff, size, now))
    # A success commits at most one lease after its succeeded_at: look no closer to now than that.
    settled_before = now - timedelta(seconds=config["OPERATION_LEASE_SECONDS"])
    report.stripe_bodies += batches.drain(lambda: _trim_late_settled_bodies(settled_before, size, now))
    runs_cutoff = now - timedelta(days=config["RETENTION_JOB_RUNS_DAYS"])
    report.job_runs += batches.drain(
        lambda: _delete_ids(JobRun, select(JobRun.id).where(JobRun.started_at < runs_cutoff).order_by(JobRun.id), size)
    )
    alerts_cutoff = now - timedelta(days=config["RETENTION_ALERTS_DAYS"])
    report.alerts += batches.drain(
        lambda: _delete_ids(Alert, select(Alert.id).where(Alert.created_at < alerts_cutoff).order_by(Alert.id), size)
    )
    report.failed_logins += _forget_failed_logins(batches, now, config, size)
    report.admin_sessions += batches.drain(lambda: _delete_ids(AdminSession, _ended_sessions(now, config), size))
    expired = _expired_bulk_jobs(now, config)
    batches.drain(lambda: _delete_bulk_items(expired, size))
    report.bulk_jobs += batches.drain(lambda: _delete_ids(BulkJob, select(BulkJob.id).where(expired), size))
    report.rate_limits += batches.drain(lambda: ratelimit.forget_idle(now, size))
    consumers_cutoff = consumers.retention_cutoff(now, config)
    report.consumers += batches.drain(lambda: consumers.prune_batch(consumers_cutoff, size))
    # The only deletion of audit rows anywhere: by age, after a retention far longer than the rest.
    audit_cutoff = now - timedelta(days=config["RETENTION_AUDIT_DAYS"])
    report.audit_entries += batches.drain(
        lambda: _delete_ids(
            AuditEntry, select(AuditEntry.id).where(AuditEntry.created_at < audit_cutoff).order_by(AuditEntry.id), size
        )
    )
    log.info("cleanup: %s", report, extra={"max_batch_ms": round(report.max_batch_ms, 1)})
    return report


def _forget_failed_logins(batches: _Batches, now: datetime, config: Mapping, size: int) -> int:
    """Failed-login counts with no failure for the retention period and no lock still running."""
    cutoff = now - timedelta(days=config["RETENTION_FAILED_LOGINS_DAYS"])
    removed = 0
    for model in (FailedLogin, FailedLoginAddress):
        stale = select(model.id).where(
            model.last_failed_at < cutoff, (model.locked_until.is_(None)) | (model.locked_until <= now)
        )
        removed += batches.drain(lambda model=model, stale=stale: _delete_ids(model, stale.order_by(model.id), size))
    return removed


def _expired_bulk_jobs(now: datetime, config: Mapping):
    """Bulk jobs to delete: drafts never confirmed in time, and finished jobs past their retention."""
    draft_cutoff = now - timedelta(minutes=config["BULK_DRAFT_EXPIRE_MINUTES"])
    finished_cutoff = now - timedelta(days=config["RETENTION_BULK_JOBS_DAYS"])
    return ((BulkJob.state == "draft") & (BulkJob.created_at < draft_cutoff)) | (
        BulkJob.state.in_(BULK_FINISHED_STATES) & (BulkJob.finished_at < finished_cutoff)
    )


def _delete_bulk_items(expired, size: int) -> int:
    """One batch of the snapshot rows of expired bulk jobs (a snapshot can hold thousands)."""
    rows = db.session.execute(
        select(BulkJobItem.bulk_job_id, BulkJobItem.operation_id)
        .where(BulkJobItem.bulk_job_id.in_(select(BulkJob.id).where(expired)))
        .limit(size)
    ).all()
    if not rows:
        db.session.rollback()
        return 0
    db.session.execute(
        delete(BulkJobItem)
        .where(tuple_(BulkJobItem.bulk_job_id, BulkJobItem.operation_id).in_([tuple(row) for row in rows]))
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return len(rows)


def _ended_sessions(now: datetime, config: Mapping):
    """Admin sessions that can never be used again: revoked, idle too long, or past their lifetime."""
    return (
        select(AdminSession.id)
        .where(
            AdminSession.revoked_at.is_not(None)
            | (AdminSession.last_seen_at < now - timedelta(minutes=config["ADMIN_SESSION_IDLE_MINUTES"]))
            | (AdminSession.created_at < now - timedelta(hours=config["ADMIN_SESSION_MAX_HOURS"]))
        )
        .order_by(AdminSession.id)
    )


def _delete_operations(query, size: int) -> int:
    """One batch: roll the operations' counts up, then delete them (attempts and email log cascade)."""
    ids = db.session.execute(query.limit(size)).scalars().all()
    if not ids:
        db.session.rollback()
        return 0
    roll_up_operations(ids)
    db.session.execute(delete(Operation).where(Operation.id.in_(ids)).execution_options(synchronize_session=False))
    db.session.commit()
    return len(ids)


def _delete_ids(model, query, size: int) -> int:
    ids = db.session.execute(query.limit(size)).scalars().all()
    if not ids:
        db.session.rollback()
        return 0
    db.session.execute(delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False))
    db.session.commit()
    return len(ids)


def _trim_stripe_bodies(cutoff: datetime, size: int, now: datetime) -> int:
    """One batch of settled Stripe events older than ``cutoff``: drop the raw body, keep the row.

    Walks ``received_at`` from a stored cursor, so a run never rescans what earlier runs trimmed.
    Returns the number of events looked at (0 when the walk reached the cutoff).
    """
    cursor = db.session.get(MaintenanceCursor, STRIPE_CURSOR)
    query = select(StripeEvent.id, StripeEvent.received_at).where(StripeEvent.received_at < cutoff)
    if cursor is not None and cursor.position is not None:
        query = query.where(
            (StripeEvent.received_at > cursor.position)
            | ((StripeEvent.received_at == cursor.position) & (StripeEvent.id > (cursor.last_key or "")))
        )
    rows = db.session.execute(query.order_by(StripeEvent.received_at, StripeEvent.id).limit(size)).all()
    if not rows:
        db.session.rollback()
        return 0
    db.session.execute(
        update(StripeEvent)
        .where(StripeEvent.id.in_([row.id for row in rows]), StripeEvent.processing_state.in_(SETTLED_EVENT_STATES))
        .values(payload="")
        .execution_options(synchronize_session=False)
    )
    if cursor is None:
        cursor = MaintenanceCursor(name=STRIPE_CURSOR)
        db.session.add(cursor)
    cursor.position, cursor.last_key, cursor.updated_at = rows[-1].received_at, rows[-1].id, now
    db.session.commit()
    return len(rows)


def _trim_late_settled_bodies(settled_before: datetime, size: int, now: datetime) -> int:
    """One batch of webhook operations that succeeded since the last look, oldest first.

    The body walk passes failed and pending events by (they keep their body for a replay);
    when such an event is settled later, its operation's success brings it back here and its
    body is trimmed too. Walks ``succeeded_at`` (the ``(kind, succeeded_at)`` index) with its
    own cursor; returns the number of operations looked at.
    """
    body = db.session.get(MaintenanceCursor, STRIPE_CURSOR)
    if body is None or body.position is None:
        db.session.rollback()
        return 0  # the walk has passed nothing yet
    cursor = db.session.get(MaintenanceCursor, STRIPE_LATE_CURSOR)
    after = cursor.position if cursor is not None else None
    query = select(Operation.succeeded_at).where(Operation.kind == "webhook", Operation.succeeded_at < settled_before)
    if after is not None:
        query = query.where(Operation.succeeded_at > after)
    times = db.session.execute(query.order_by(Operation.succeeded_at).limit(size)).scalars().all()
    if not times:
        db.session.rollback()
        return 0
    window = [Operation.kind == "webhook", Operation.succeeded_at <= times[-1]]  # every tie of the last
    if after is not None:
        window.append(Operation.succeeded_at > after)
    db.session.execute(
        update(StripeEvent)
        .where(
            StripeEvent.operation_id.in_(select(Operation.id).where(*window)),
            StripeEvent.received_at <= body.position,
            StripeEvent.payload != "",
            StripeEvent.processing_state.in_(SETTLED_EVENT_STATES),
        )
        .values(payload="")
        .execution_options(synchronize_session=False)
    )
    if cursor is None:
        cursor = MaintenanceCursor(name=STRIPE_LATE_CURSOR)
        db.session.add(cursor)
    cursor.position, cursor.updated_at = times[-1], now
    db.session.commit()
    return len(times)
