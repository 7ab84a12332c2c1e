"""Acting on many operations at once: selected rows now, or a whole filter in the background.

"Retry everything matching this filter" (and run now, reschedule or cancel everything
matching) is two steps. :func:`create_draft` snapshots the ids that match when the admin is
shown the count (a ``BulkJob`` in ``draft`` plus one ``BulkJobItem`` per id); :func:`start`
confirms it by creating an ``admin.bulk_retry`` operation, whose handler works through the
snapshot in batches, committing progress after each and stopping when asked to. Operations
that match only after the snapshot are not touched; each batch changes only those still in
a state the action applies to (the engine's conditional updates). Every operation changed,
and the job's start, cancel and result, are recorded in the audit log.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, insert, literal, select, update

from webapp.domain.errors import PermanentError
from webapp.domain.retry import RetryPolicy
from webapp.domain.states import State
from webapp.domain.time import as_naive_utc, iso, utcnow
from webapp.extensions import db
from webapp.models import BulkJob, BulkJobItem, Operation
from webapp.services.console import audit
from webapp.services.console.filters import MAX_ID, Filters, filter_conditions
from webapp.services.console.issues import fingerprint_text
from webapp.services.engine import operations
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.operations import checked_note, create_operation
from webapp.services.engine.registry import handler
from webapp.services.engine.runner import on_outcome

log = logging.getLogger("backstop.bulk")

JOB_OPERATION = "admin.bulk_retry"
BATCH_SIZE = 200
MAX_SELECTED = 500
# What a bulk job can do, and the filter statuses it may snapshot (the states it applies to).
ACTIONS = ("retry", "run_now", "reschedule", "cancel")
WAITING_STATUSES = ("scheduled", "retrying", "due")
# Each action's audit name for the operations it changes, and the verb the console shows.
OPERATION_ACTIONS = {
    "retry": "operation.retry",
    "run_now": "operation.run_now",
    "reschedule": "operation.reschedule",
    "cancel": "operation.cancel",
}
VERBS = {"retry": "retried", "run_now": "run now", "reschedule": "rescheduled", "cancel": "cancelled"}


class BulkError(ValueError):
    """A bulk request that cannot be carried out (unknown job, wrong state, too many rows)."""


class BulkJobNotFound(BulkError):
    """No bulk job has this id."""


def retry_ids(ids: list[int], *, by: str, now: datetime | None = None, address: str | None = None) -> tuple[int, int]:
    """Retry the dead operations among ``ids`` now; return ``(retried, skipped)``. Commits."""
    ids = _checked(ids)
    now = now or utcnow()
    retried = _retry_batch(ids, by, now)
    _record_each("operation.retry", retried, by, address=address, details={"selected": len(ids)})
    db.session.commit()
    return len(retried), len(ids) - len(retried)


def _record_each(action: str, ids, by: str | None, *, note=None, address=None, details=None) -> None:
    """One audit row per operation changed, in the caller's transaction."""
    for operation_id in ids:
        audit.record(
            action,
            actor=by,
            target_type="operation",
            target_id=str(operation_id),
            note=note,
            address=address,
            details=details,
        )


def _retry_batch(ids: list[int], by: str, now: datetime) -> list[int]:
    """Move the dead ones among ``ids`` to pending (same values as a single admin retry); return their ids."""
    changed = (
        db.session.execute(
            update(Operation)
            .where(Operation.id.in_(ids), Operation.state == State.DEAD.value)
            .values(operations.retry_values(now, 1, f"retried by {by}"))
            .returning(Operation.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    for operation_id in changed:
        ring_after_commit(db.session, operation_id, stamp=now)
    return list(changed)


def resolve_ids(
    ids: list[int], *, by: str, note: str = "", now: datetime | None = None, address: str | None = None
) -> tuple[int, int]:
    """Resolve the unresolved dead operations among ``ids``; return ``(resolved, skipped)``. Commits.

    A note over the limit refuses the whole request (``NoteTooLong``): nothing is resolved.
    """
    note = checked_note(note)
    ids = _checked(ids)
    now = now or utcnow()
    resolved = []
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = ids[start : start + BATCH_SIZE]
        resolved += (
            db.session.execute(
                update(Operation)
                .where(Operation.id.in_(chunk), Operation.state == State.DEAD.value, Operation.resolved_at.is_(None))
                .values(resolved_at=now, resolved_by=by, resolution_note=note, updated_at=now)
                .returning(Operation.id)
                .execution_options(synchronize_session=False)
            )
            .scalars()
            .all()
        )
    _record_each("operation.resolve", resolved, by, note=note, address=address, details={"selected": len(ids)})
    db.session.commit()
    return len(resolved), len(ids) - len(resolved)


def _checked(ids) -> list[int]:
    """Distinct ids, each ASCII digits from 1 to MAX_ID (a BIGINT), or BulkError naming the first bad one."""
    checked = set()
    for value in ids:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID)) and 0 < int(text) <= MAX_ID):
            shown = str(value)[:40].encode("ascii", "backslashreplace").decode("ascii")
            raise BulkError(f"operation id '{shown}' is not an operation id (an integer from 1 to {MAX_ID})")
        checked.add(int(text))
    ids = sorted(checked)
    if not ids:
        raise BulkError("select at least one operation")
    if len(ids) > MAX_SELECTED:
        raise BulkError(f"at most {MAX_SELECTED} operations at once; use 'retry everything matching'")
    return ids


def resolve_matching(
    filters: Filters, *, by: str, note: str = "", now: datetime | None = None, address: str | None = None
) -> int:
    """Resolve every unresolved dead operation matching ``filters`` (an Issues group), in one UPDATE. Commits.

    Pass ``until`` in the filters (the time the group was shown) so failures that arrive
    after the admin looked at the group are left alone. A note over the limit refuses the
    whole request (``NoteTooLong``).
    """
    note = checked_note(note)
    if not filters.dead_only:
        raise BulkError("only dead-lettered operations can be resolved")
    now = now or utcnow()
    resolved = (
        db.session.execute(
            update(Operation)
            .where(*filter_conditions(filters, now), Operation.resolved_at.is_(None))
            .values(resolved_at=now, resolved_by=by, resolution_note=note, updated_at=now)
            .returning(Operation.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    _record_each("operation.resolve", resolved, by, note=note, address=address, details={"group": filters.describe()})
    db.session.commit()
    return len(resolved)


def create_draft(
    filters: Filters,
    *,
    by: str,
    now: datetime | None = None,
    action: str = "retry",
    run_at: datetime | None = None,
) -> BulkJob:
    """Snapshot the operations matching ``filters`` into a draft job of ``action``. Commits.

    Retry takes dead-letter filters; run now, reschedule (to ``run_at``, future and bounded)
    and cancel take waiting work (scheduled, retrying, due). The snapshot is one
    ``INSERT ... SELECT`` in the database, so its size costs no memory here; the job's
    ``total`` is the number of rows it took.
    """
    now = now or utcnow()
    params = _checked_action(action, filters, run_at, now)
    job = BulkJob(
        action=action,
        params=params,
        state="draft",
        filters=filters.to_json(),
        description=filters.describe(fingerprint_text(filters.fingerprint) if filters.fingerprint else None),
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


def _checked_action(action: str, filters: Filters, run_at: datetime | None, now: datetime) -> dict | None:
    """The job's parameters if ``action`` applies to ``filters``, else :class:`BulkError`."""
    if action not in ACTIONS:
        raise BulkError(f"action must be one of {', '.join(ACTIONS)}")
    if action == "retry":
        if not filters.dead_only:
            raise BulkError("only dead-lettered operations can be retried in bulk")
        return None
    if filters.status not in WAITING_STATUSES:
        raise BulkError(
            f"only waiting operations (status {', '.join(WAITING_STATUSES)}) can be {VERBS[action]} in bulk"
        )
    if action != "reschedule":
        return None
    if run_at is None:
        raise BulkError("a reschedule needs the new run time")
    try:
        return {"run_at": iso(operations.checked_run_at(run_at, now))}
    except operations.InvalidArgument as exc:
        raise BulkError(str(exc)) from None


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


def start(
    job_id: int,
    *,
    by: str,
    now: datetime | None = None,
    draft_expire_minutes: float | None = None,
    address: str | None = None,
) -> BulkJob:
    """Confirm a draft: queue the background operation that works through its snapshot. Commits.

    A draft older than ``draft_expire_minutes`` has expired (its count is stale, and cleanup
    deletes it): it cannot be confirmed; preview again.
    """
    now = now or utcnow()
    conditions = [BulkJob.id == job_id, BulkJob.state == "draft"]
    if draft_expire_minutes is not None:
        conditions.append(BulkJob.created_at >= now - timedelta(minutes=draft_expire_minutes))
    changed = db.session.execute(
        update(BulkJob).where(*conditions).values(state="queued").execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        job = get_job(job_id)
        if job.state == "draft":
            raise BulkError(f"bulk job {job.id} expired before it was confirmed; preview it again")
        raise BulkError(f"bulk job {job.id} was already confirmed or cancelled")
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
    job = db.session.get(BulkJob, job_id)
    audit.record(
        "bulk_job.start",
        actor=by,
        target_type="bulk_job",
        target_id=str(job_id),
        address=address,
        details={"action": job.action, "total": job.total, "filters": job.description, **(job.params or {})},
    )
    db.session.commit()
    return get_job(job_id)


def cancel(job_id: int, now: datetime | None = None, *, by: str | None = None, address: str | None = None) -> BulkJob:
    """Stop a job: a draft or queued one is cancelled at once, a running one after its current batch. Commits."""
    now = now or utcnow()
    job = get_job(job_id)
    if job.finished:
        raise BulkError(f"bulk job {job_id} has already finished ({job.state})")
    # A draft, or a job whose operation has not started (e.g. its name is paused), stops at once;
    # a running one after its current batch (its handler returns at once for a finished job).
    stopped = db.session.execute(
        update(BulkJob)
        .where(BulkJob.id == job_id, BulkJob.state.in_(("draft", "queued")))
        .values(state="cancelled", finished_at=now, cancel_requested=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not stopped:
        db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    audit.record(
        "bulk_job.cancel",
        actor=by,
        target_type="bulk_job",
        target_id=str(job_id),
        address=address,
        details={"action": job.action, "state": job.state, "processed": job.processed},
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
        changed = _apply(job, batch, by, clock())
        db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id)
            .values(
                cursor=batch[-1],
                processed=BulkJob.processed + len(batch),
                succeeded=BulkJob.succeeded + changed,
                skipped=BulkJob.skipped + len(batch) - changed,
            )
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def _apply(job: BulkJob, batch: list[int], by: str, now: datetime) -> int:
    """Do the job's action to the operations of ``batch`` still in a state it applies to; audit each."""
    if job.action == "retry":
        changed = _retry_batch(batch, by, now)
    elif job.action == "run_now":
        changed = operations.run_now_many(batch, now=now)
    elif job.action == "cancel":
        changed = operations.cancel_many(batch, by=by, now=now)
    elif job.action == "reschedule":
        run_at = as_naive_utc(datetime.fromisoformat((job.params or {})["run_at"].replace("Z", "+00:00")))
        if run_at <= now:
            # The chosen time passed while the job waited: moving work "later" into the past would run it now.
            raise BulkError(f"the new run time {iso(run_at)} has passed; nothing more is rescheduled")
        changed = operations.reschedule_many(batch, run_at, now=now)
    else:
        raise BulkError(f"bulk job {job.id} has an unknown action {job.action!r}")
    _record_each(OPERATION_ACTIONS[job.action], changed, by, details={"bulk_job_id": job.id, **(job.params or {})})
    return len(changed)


def _set(job_id: int, **values) -> None:
    db.session.execute(
        update(BulkJob).where(BulkJob.id == job_id).values(**values).execution_options(synchronize_session=False)
    )
    db.session.commit()


def _finish(job_id: int, state: str, now: datetime) -> BulkJob:
    job = get_job(job_id)
    _record_result(job, state)
    _set(job_id, state=state, finished_at=now)
    log.info("bulk job %s %s", job_id, state)
    return get_job(job_id)


def _record_result(job: BulkJob, state: str, error: str | None = None) -> None:
    """The job's result in the audit log (in the caller's transaction): by the system, for its creator."""
    audit.record(
        "bulk_job.result",
        actor=None,
        target_type="bulk_job",
        target_id=str(job.id),
        note=error,
        details={
            "action": job.action,
            "state": state,
            "total": job.total,
            "processed": job.processed,
            "changed": job.succeeded,
            "skipped": job.skipped,
            "created_by": job.created_by,
        },
    )


@handler(JOB_OPERATION, kind="job", policy=RetryPolicy.retries(3), lease_seconds=900)
def bulk_retry_handler(ctx) -> dict:
    """The background half of "retry everything matching": resumes after a crash from its cursor."""
    job_id = ctx.payload.get("bulk_job_id")
    if not isinstance(job_id, int):
        raise PermanentError("payload has no integer bulk_job_id")
    try:
        job = run_job(job_id, ctx.payload.get("by") or "admin")
    except BulkError as exc:
        raise PermanentError(str(exc)) from exc
    return {"bulk_job_id": job_id, "state": job.state, "retried": job.succeeded, "skipped": job.skipped}


@on_outcome(outcomes=("dead",))
def _mark_failed_jobs(operation, outcome: str) -> None:
    """A bulk job whose operation was dead-lettered shows as failed, with the reason."""
    if operation.name != JOB_OPERATION:
        return
    job_id = (operation.payload or {}).get("bulk_job_id")
    if isinstance(job_id, int):
        failed = db.session.execute(
            update(BulkJob)
            .where(BulkJob.id == job_id, BulkJob.state.in_(("queued", "running")))
            .values(state="failed", error=operation.error_message, finished_at=operation.dead_at)
            .execution_options(synchronize_session=False)
        ).rowcount
        job = db.session.get(BulkJob, job_id) if failed else None
        if job is not None:
            _record_result(job, "failed", operation.error_message)
