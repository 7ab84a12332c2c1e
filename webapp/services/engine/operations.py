"""Creating operations inside the caller's transaction, and the admin actions on them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from webapp.domain.states import CLAIMABLE, State, can_transition
from webapp.domain.time import as_naive_utc, utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.registry import registry

# The longest note a person may leave on an operation or a pause, in characters (after stripping).
MAX_NOTE = 2000


class OperationError(Exception):
    """An admin action that does not apply to the operation in its current state."""


class OperationNotFound(OperationError, LookupError):
    """No operation has that id."""


class NoteTooLong(ValueError):
    """A note over :data:`MAX_NOTE` characters: refused whole, never cut short."""


def checked_note(note: str | None) -> str | None:
    """The note as stored (stripped; ``None`` when empty), or :class:`NoteTooLong`."""
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise NoteTooLong(f"the note is limited to {MAX_NOTE} characters; this one has {len(note)}")
    return note or None


def create_operation(
    name: str,
    payload: dict | None = None,
    *,
    idempotency_key: str,
    subject: str | None = None,
    run_at: datetime | None = None,
    now: datetime | None = None,
) -> Operation:
    """Add an operation to the current transaction; the same key returns the existing one.

    The caller commits. The worker is rung only after that commit, so an operation whose
    business transaction rolls back is never run.
    """
    now = now or utcnow()
    existing = find_by_key(idempotency_key)
    if existing is not None:
        return existing
    handler = registry.get(name)
    run_at = as_naive_utc(run_at) if run_at else None
    scheduled = run_at is not None and run_at > now
    operation = Operation(
        kind=handler.kind,
        name=name,
        payload=payload or {},
        idempotency_key=idempotency_key,
        subject=subject,
        state=(State.SCHEDULED if scheduled else State.PENDING).value,
        max_attempts=handler.policy.max_attempts,
        next_attempt_at=run_at if scheduled else now,
        run_at=run_at,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    # A savepoint keeps the caller's transaction alive if a concurrent insert wins the key.
    try:
        with db.session.begin_nested():
            db.session.add(operation)
    except IntegrityError:
        existing = find_by_key(idempotency_key)
        if existing is None:
            raise
        return existing
    ring_after_commit(db.session, operation.id, operation.next_attempt_at if scheduled else None)
    return operation


def _may_become(target: State, among=tuple(State)) -> list[str]:
    """States (of ``among``) from which the domain's diagram allows moving to ``target``."""
    return [state.value for state in among if can_transition(state, target)]


def find_by_key(idempotency_key: str) -> Operation | None:
    """The operation with this idempotency key, if any."""
    return db.session.execute(
        select(Operation).where(Operation.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


def get_operation(operation_id: int) -> Operation:
    """The operation with this id, or :class:`OperationNotFound`."""
    operation = db.session.get(Operation, operation_id, populate_existing=True)
    if operation is None:
        raise OperationNotFound(f"operation {operation_id} does not exist")
    return operation


def retry_dead(
    operation_id: int, *, by: str | None = None, now: datetime | None = None, extra_attempts: int = 1
) -> Operation:
    """Bring a dead operation back to ``pending`` with at least ``extra_attempts`` more to go.

    Commits and rings the worker.
    """
    now = now or utcnow()
    operation = get_operation(operation_id)
    if operation.state != State.DEAD:
        raise OperationError(f"operation {operation_id} is {operation.state}, not dead")
    changed = db.session.execute(
        update(Operation)
        .where(Operation.id == operation_id, Operation.state == State.DEAD.value)
        .values(
            state=State.PENDING.value,
            max_attempts=Operation.attempts + extra_attempts,
            next_attempt_at=now,
            enqueued_at=now,
            dead_at=None,
            resolved_at=None,
            resolved_by=None,
            resolution_note=f"retried by {by}" if by else None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        raise OperationError(f"operation {operation_id} changed state while being retried")
    ring_after_commit(db.session, operation_id)
    db.session.commit()
    return get_operation(operation_id)


def resolve(operation_id: int, *, by: str, note: str = "", now: datetime | None = None) -> Operation:
    """Mark a dead operation as handled by a person: it stays dead, with who, when and why."""
    note = checked_note(note)
    now = now or utcnow()
    operation = get_operation(operation_id)
    if operation.state != State.DEAD:
        raise OperationError(f"only dead operations can be resolved; {operation_id} is {operation.state}")
    if operation.resolved_at is not None:
        raise OperationError(f"operation {operation_id} is already resolved")
    operation.resolved_at = now
    operation.resolved_by = by
    operation.resolution_note = note
    operation.updated_at = now
    db.session.commit()
    return operation


def cancel(operation_id: int, *, by: str | None = None, now: datetime | None = None) -> Operation:
    """Cancel an operation that has not started: it will never run."""
    now = now or utcnow()
    changed = db.session.execute(
        update(Operation)
        .where(Operation.id == operation_id, Operation.state.in_(_may_become(State.CANCELLED)))
        .values(
            state=State.CANCELLED.value,
            cancelled_at=now,
            updated_at=now,
            resolution_note=f"cancelled by {by}" if by else None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        operation = get_operation(operation_id)
        raise OperationError(f"operation {operation_id} is {operation.state} and cannot be cancelled")
    db.session.commit()
    return get_operation(operation_id)


def reschedule(operation_id: int, run_at: datetime, *, now: datetime | None = None) -> Operation:
    """Move a scheduled (or waiting) operation to a new run time; it runs then, and only then."""
    now = now or utcnow()
    run_at = as_naive_utc(run_at)
    target = State.SCHEDULED if run_at > now else State.PENDING
    # Only an operation still waiting to run moves; the diagram says from which states.
    waiting = _may_become(target, among=CLAIMABLE)
    changed = db.session.execute(
        update(Operation)
        .where(Operation.id == operation_id, Operation.state.in_(waiting))
        .values(state=target.value, run_at=run_at, next_attempt_at=run_at, enqueued_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        operation = get_operation(operation_id)
        raise OperationError(f"operation {operation_id} is {operation.state} and cannot be rescheduled")
    ring_after_commit(db.session, operation_id, run_at if run_at > now else None)
    db.session.commit()
    return get_operation(operation_id)
