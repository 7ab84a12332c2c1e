"""Acting on many operations at once: selected rows now, or a whole filter in the background.

"Retry everything matching this filter" is two steps. :func:`create_draft` snapshots the ids
that match when the admin is shown the count (a ``BulkJob`` in ``draft`` plus one
``BulkJobItem`` per id); :func:`start` confirms it by creating an ``admin.bulk_retry``
operation, whose handler works through the snapshot in batches, committing progress after
each and stopping when asked to. Operations that die after the snapshot are not touched.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, insert, literal, select, update

from webapp.domain.errors import PermanentError
from webapp.domain.retry import RetryPolicy
from webapp.domain.states import State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import BulkJob, BulkJobItem, Operation
from webapp.services.console.filters import Filters, filter_conditions
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.operations import checked_note, create_operation
from webapp.services.engine.registry import handler
from webapp.services.engine.runner import on_outcome

log = logging.getLogger("backstop.bulk")

JOB_OPERATION = "admin.bulk_retry"
BATCH_SIZE = 200
MAX_SELECTED = 500


class BulkError(ValueError):
    """A bulk request that cannot be carried out (unknown job, wrong state, too many rows)."""


class BulkJobNotFound(BulkError):
    """No bulk job has this id."""


def retry_ids(ids: list[int], *, by: str, now: datetime | None = None) -> tuple[int, int]:
    """Retry the dead operations among ``ids`` now; return ``(retried, skipped)``. Commits."""
    ids = _checked(ids)
    now = now or utcnow()
    retried = _retry_batch(ids, by, now)
    db.session.commit()
    return retried, len(ids) - retried


def _retry_batch(ids: list[int], by: str, now: datetime) -> int:
    """Move the dead ones among ``ids`` to pending (same values as a single admin retry)."""
    dead = (
        db.session.execute(select(Operation.id).where(Operation.id.in_(ids), Operation.state == State.DEAD.value))
        .scalars()
        .all()
    )
    if not dead:
        return 0
    changed = db.session.execute(
        update(Operation)
        .where(Operation.id.in_(dead), Operation.state == State.DEAD.value)
        .values(
            state=State.PENDING.value,
            max_attempts=Operation.attempts + 1,
            next_attempt_at=now,
            enqueued_at=now,
            dead_at=None,
            resolved_at=None,
            resolved_by=None,
            resolution_note=f"retried by {by}",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    for operation_id in dead:
        ring_after_commit(db.session, operation_id)
    return changed


def resolve_ids(ids: list[int], *, by: str, note: str = "", now: datetime | None = None) -> tuple[int, int]:
    """Resolve the unresolved dead operations among ``ids``; return ``(resolved, skipped)``. Commits.

    A note over the limit refuses the whole request (``NoteTooLong``): nothing is resolved.
    """
    note = checked_note(note)
    ids = _checked(ids)
    now = now or utcnow()
    resolved = 0
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = ids[start : start + BATCH_SIZE]
        resolved += db.session.execute(
            update(Operation)
            .where(Operation.id.in_(chunk), Operation.state == State.DEAD.value, Operation.resolved_at.is_(None))
            .values(resolved_at=now, resolved_by=by, resolution_note=note, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    db.session.commit()
    return resolved, len(ids) - resolved


def _checked(ids) -> list[int]:
    try:
        ids = sorted({int(value) for value in ids})
    except (TypeError, ValueError):
        raise BulkError("operation ids must be integers") from None
    if not ids:
        raise BulkError("select at least one operation")
    if len(ids) > MAX_SELECTED:
        raise BulkError(f"at most {MAX_SELECTED} operations at once; use 'retry everything matching'")
    return ids


def resolve_matching(filters: Filters, *, by: str, note: str = "", now: datetime | None = None) -> int:
    """Resolve every unresolved dead operation matching ``filters`` (an Issues group), in one UPDATE. Commits.

    Pass ``until`` in the filters (the time the group was shown) so failures that arrive
    after the admin looked at the group are left alone. A note over the limit refuses the
    whole request (``NoteTooLong``).
    """
    note = checked_note(note)
    if not filters.dead_only:
        raise BulkError("only dead-lettered operations can be resolved")
    now = now or utcnow()
    resolved = db.session.execute(
        update(Operation)
        .where(*filter_conditions(filters, now), Operation.resolved_at.is_(None))
        .values(resolved_at=now, resolved_by=by, resolution_note=note, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return resolved


def create_draft(filters: Filters, *, by: str, now: datetime | None = None) -> BulkJob:
    """Snapshot the dead operations matching ``filters`` into a draft retry job. Commits.

    The snapshot is one ``INSERT ... SELECT`` in the database, so its size costs no memory
    here; the job's ``total`` is the number of rows it took.
    """
    if not filters.dead_only:
        raise BulkError("only dead-lettered operations can be retried in bulk")
    now = now or utcnow()
    job = BulkJob(
        action="retry",
        state="draft",
        filters=filters.to_json(),
        description=filters.describe(),
        total=0,
        created_by=by,
        created_at=now,
    )
    db.session.add(job)
    db.session.flush()
    db.session.execute(
        insert(BulkJobItem).from_select(
            ["bulk_job_id", "operation_id"],
            select(literal(job.id), Operation.id).where(*filter_conditions(filters, now)),
        )
    )
    total = db.session.execute(
        select(func.count()).select_from(BulkJobItem).where(BulkJobItem.bulk_job_id == job.id)
    ).scalar_one()
    db.session.execute(
        update(BulkJob).where(BulkJob.id == job.id).values(total=total).execution_options(synchronize_session=False)
    )
    db.session.commit()
    return get_job(job.id)


def get_job(job_id: int) -> BulkJob:
    """A bulk job by id (fresh from the database), or :class:`BulkError`."""
    job = db.session.get(BulkJob, job_id, populate_existing=True)
    db.session.rollback()
    if job is None:
        raise BulkJobNotFound(f"bulk job {job_id} does not exist")
    return job


def recent_jobs(limit: int = 5) -> list[BulkJob]:
    """The latest confirmed bulk jobs, newest first."""
    jobs = (
        db.session.execute(select(BulkJob).where(BulkJob.state != "draft").order_by(BulkJob.id.desc()).limit(limit))
        .scalars()
        .all()
    )
    db.session.rollback()
    return list(jobs)


def start(job_id: int, *, by: str, now: datetime | None = None) -> BulkJob:
    """Confirm a draft: queue the background operation that works through its snapshot. Commits."""
    now = now or utcnow()
    changed = db.session.execute(
        update(BulkJob)
        .where(BulkJob.id == job_id, BulkJob.state == "draft")
        .values(state="queued")
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        raise BulkError(f"bulk job {get_job(job_id).id} was already confirmed or cancelled")
    operation = create_operation(
        JOB_OPERATION,
        {"bulk_job_id": job_id, "by": by},
        idempotency_key=f"bulk-job:{job_id}",
        subject=f"bulk-job:{job_id}",
        now=now,
    )
    db.session.execute(
        update(BulkJob)
        .where(BulkJob.id == job_id)
        .values(operation_id=operation.id)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return get_job(job_id)


def cancel(job_id: int, now: datetime | None = None) -> BulkJob:
    """Stop a job: a draft is cancelled at once, a running one after its current batch. Commits."""
    now = now or utcnow()
    job = get_job(job_id)
    if job.finished:
        raise BulkError(f"bulk job {job_id} has already {job.state}")
    values = {"state": "cancelled", "finished_at": now} if job.state == "draft" else {"cancel_requested": True}
    db.session.execute(
        update(BulkJob).where(BulkJob.id == job_id).values(**values).execution_options(synchronize_session=False)
    )
    db.session.commit()
    return get_job(job_id)


def run_job(job_id: int, by: str, *, batch_size: int = BATCH_SIZE, clock=utcnow) -> BulkJob:
    """Work through a job's snapshot after its cursor, one committed batch at a time."""
    job = get_job(job_id)
    if job.finished:
        return job
    _set(job_id, state="running", started_at=job.started_at or clock())
    while True:
        job = get_job(job_id)
        if job.cancel_requested:
            return _finish(job_id, "cancelled", clock())
        batch = (
            db.session.execute(
                select(BulkJobItem.operation_id)
                .where(BulkJobItem.bulk_job_id == job_id, BulkJobItem.operation_id > job.cursor)
                .order_by(BulkJobItem.operation_id)
                .limit(batch_size)
            )
            .scalars()
            .all()
        )
        if not batch:
            db.session.rollback()
            return _finish(job_id, "done", clock())
        retried = _retry_batch(batch, by, clock())
        db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id)
            .values(
                cursor=batch[-1],
                processed=BulkJob.processed + len(batch),
                succeeded=BulkJob.succeeded + retried,
                skipped=BulkJob.skipped + len(batch) - retried,
            )
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def _set(job_id: int, **values) -> None:
    db.session.execute(
        update(BulkJob).where(BulkJob.id == job_id).values(**values).execution_options(synchronize_session=False)
    )
    db.session.commit()


def _finish(job_id: int, state: str, now: datetime) -> BulkJob:
    _set(job_id, state=state, finished_at=now)
    log.info("bulk job %s %s", job_id, state)
    return get_job(job_id)


@handler(JOB_OPERATION, kind="job", policy=RetryPolicy.retries(3), lease_seconds=900)
def bulk_retry_handler(ctx) -> None:
    """The background half of "retry everything matching": resumes after a crash from its cursor."""
    job_id = ctx.payload.get("bulk_job_id")
    if not isinstance(job_id, int):
        raise PermanentError("payload has no integer bulk_job_id")
    try:
        run_job(job_id, ctx.payload.get("by") or "admin")
    except BulkError as exc:
        raise PermanentError(str(exc)) from exc


@on_outcome
def _mark_failed_jobs(operation, outcome: str) -> None:
    """A bulk job whose operation was dead-lettered shows as failed, with the reason."""
    if outcome != "dead" or operation.name != JOB_OPERATION:
        return
    job_id = (operation.payload or {}).get("bulk_job_id")
    if isinstance(job_id, int):
        db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id, BulkJob.state.in_(("queued", "running")))
            .values(state="failed", error=operation.error_message, finished_at=operation.dead_at)
            .execution_options(synchronize_session=False)
        )
