"""Creating operations inside the caller's transaction, and the admin actions on them."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, select, update

from webapp.domain.states import CLAIMABLE, State, can_transition
from webapp.domain.text import text_problem
from webapp.domain.time import as_naive_utc, utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.registry import UnknownHandler, registry
from webapp.services.engine.sql import prepared_insert

# The longest note a person may leave on an operation or a pause, in characters (after stripping).
MAX_NOTE = 2000
# An admin retry grants from 1 to this many more attempts.
MAX_EXTRA_ATTEMPTS = 20
# How far ahead an admin may reschedule: further than this is a typo, not a plan.
MAX_RESCHEDULE_AHEAD = timedelta(days=365)
# What an admin may run now or reschedule: waiting work with a time of its own (pending is due already).
ADMIN_MOVABLE = (State.SCHEDULED, State.RETRYING)


class OperationError(Exception):
    """An admin action that does not apply to the operation in its current state."""


class OperationNotFound(OperationError, LookupError):
    """No operation has that id."""


class InvalidArgument(ValueError):
    """An admin action asked with a value outside its bounds (attempts, a run time): nothing changed."""


class InvalidNote(ValueError):
    """A note that cannot be stored as given: refused whole, never altered."""


class NoteTooLong(InvalidNote):
    """A note over :data:`MAX_NOTE` characters: refused whole, never cut short."""


def checked_note(note: str | None) -> str | None:
    """The note as stored (stripped; ``None`` when empty), or :class:`NoteTooLong` /
    :class:`InvalidNote` (a NUL character or a lone surrogate, which no database can store)."""
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise NoteTooLong(f"the note is limited to {MAX_NOTE} characters; this one has {len(note)}")
    if problem := text_problem(note):
        raise InvalidNote(f"the note {problem}")
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
    try:
        handler = registry.get(name)
    except UnknownHandler:
        existing = find_by_key(idempotency_key)
        if existing is None:
            raise
        return existing
    values = _new_row(handler, name, payload, idempotency_key, subject, run_at, now)
    operation_id = _insert_once(values)
    if operation_id is None:
        existing = find_by_key(idempotency_key)
        if existing is None:
            raise OperationError(f"operation {idempotency_key!r} exists but cannot be read")
        return existing
    # A snapshot of the row just inserted (not attached to the session: nothing to flush).
    return Operation(id=operation_id, **values)


def insert_operation(
    name: str, payload: dict, *, idempotency_key: str, subject: str | None = None, now: datetime
) -> int | None:
    """Add an operation to the current transaction and return its id; None if the key exists.

    The lean form of :func:`create_operation` for hot paths that need only the id (one
    statement, no ORM object). The caller commits; the worker is rung after that commit.
    """
    return _insert_once(_new_row(registry.get(name), name, payload, idempotency_key, subject, None, now))


def new_operation_row(name: str, payload: dict, *, idempotency_key: str, subject: str | None, now: datetime) -> dict:
    """Every column of a new, due operation of handler ``name``: for a statement that inserts it
    itself (ON CONFLICT DO NOTHING on the key); its caller rings for it once that commits."""
    return _new_row(registry.get(name), name, payload, idempotency_key, subject, None, now)


def _new_row(handler, name, payload, idempotency_key, subject, run_at, now) -> dict:
    """Every column of a new operation row."""
    run_at = as_naive_utc(run_at) if run_at else None
    scheduled = run_at is not None and run_at > now
    return {
        "kind": handler.kind,
        "name": name,
        "payload": payload or {},
        "idempotency_key": idempotency_key,
        "subject": subject,
        "state": (State.SCHEDULED if scheduled else State.PENDING).value,
        "attempts": 0,
        "max_attempts": handler.policy.max_attempts,
        "next_attempt_at": run_at if scheduled else now,
        "run_at": run_at,
        "enqueued_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _insert_once(values: dict) -> int | None:
    """Insert the row unless its key exists (then None); ring for it after commit."""
    # ON CONFLICT DO NOTHING: a key that exists (or that a concurrent transaction is inserting)
    # inserts nothing and leaves the caller's transaction intact; no savepoint needed.
    table = Operation.__table__
    insert = prepared_insert(table, db.session.get_bind().dialect, tuple(values), (table.c.id,), ignore_conflicts=True)
    parameters = insert.parameters(values)  # converted before the transaction (and SQLite's write lock) begins
    operation_id = insert.execute(db.session.connection(), parameters).scalar()
    if operation_id is not None:
        scheduled = values["state"] == State.SCHEDULED.value
        eta = values["next_attempt_at"] if scheduled else None
        ring_after_commit(db.session, operation_id, eta, stamp=values["enqueued_at"])
    return operation_id


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
    checked_attempts(extra_attempts)
    now = now or utcnow()
    operation = get_operation(operation_id)
    if operation.state != State.DEAD:
        raise OperationError(f"operation {operation_id} is {operation.state}, not dead")
    changed = db.session.execute(
        update(Operation)
        .where(Operation.id == operation_id, Operation.state == State.DEAD.value)
        .values(retry_values(now, extra_attempts, f"retried by {by}" if by else None))
        .execution_options(synchronize_session=False)
    ).rowcount
    if not changed:
        db.session.rollback()
        raise OperationError(f"operation {operation_id} changed state while being retried")
    ring_after_commit(db.session, operation_id, stamp=now)
    db.session.commit()
    return get_operation(operation_id)


def retry_values(now: datetime, extra_attempts: int, note: str | None) -> dict:
    """The columns an admin retry writes on a dead operation: pending again, ``extra_attempts`` more to go."""
    return {
        "state": State.PENDING.value,
        "max_attempts": Operation.attempts + extra_attempts,
        "next_attempt_at": now,
        "enqueued_at": now,
        "dead_at": None,
        "resolved_at": None,
        "resolved_by": None,
        "resolution_note": note,
        "updated_at": now,
    }


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
    if not cancel_many([operation_id], by=by, now=now):
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
    ring_after_commit(db.session, operation_id, run_at if run_at > now else None, stamp=now)
    db.session.commit()
    return get_operation(operation_id)


def checked_attempts(extra_attempts) -> int:
    """``extra_attempts`` if it is an integer from 1 to :data:`MAX_EXTRA_ATTEMPTS`, else :class:`InvalidArgument`."""
    if isinstance(extra_attempts, bool) or not isinstance(extra_attempts, int):
        raise InvalidArgument(f"attempts must be an integer from 1 to {MAX_EXTRA_ATTEMPTS}")
    if not 1 <= extra_attempts <= MAX_EXTRA_ATTEMPTS:
        raise InvalidArgument(f"attempts must be from 1 to {MAX_EXTRA_ATTEMPTS}, not {extra_attempts}")
    return extra_attempts


def checked_run_at(run_at: datetime, now: datetime) -> datetime:
    """A new run time as naive UTC if it is in the future and within :data:`MAX_RESCHEDULE_AHEAD`."""
    run_at = as_naive_utc(run_at)
    if run_at <= now:
        raise InvalidArgument(f"the new run time {run_at:%Y-%m-%d %H:%M:%S} UTC is not in the future")
    if run_at > now + MAX_RESCHEDULE_AHEAD:
        raise InvalidArgument(f"the new run time is more than {MAX_RESCHEDULE_AHEAD.days} days ahead")
    return run_at


def run_now_many(ids: list[int], *, now: datetime | None = None) -> list[int]:
    """Make the scheduled or retrying operations among ``ids`` due now; return the ids moved.

    One conditional UPDATE (from the states the diagram allows): a worker that claimed one
    first leaves it out, so nothing runs twice. Rings each after the caller's commit.
    """
    now = now or utcnow()
    moved = (
        db.session.execute(
            update(Operation)
            .where(Operation.id.in_(ids), Operation.state.in_(_may_become(State.PENDING, among=ADMIN_MOVABLE)))
            .values(
                state=State.PENDING.value,
                next_attempt_at=now,
                # A scheduled operation's run time becomes now; a retrying one keeps its (creation-time) run_at.
                run_at=case((Operation.state == State.SCHEDULED.value, now), else_=Operation.run_at),
                enqueued_at=now,
                updated_at=now,
            )
            .returning(Operation.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    for operation_id in moved:
        ring_after_commit(db.session, operation_id, stamp=now)
    return list(moved)


def reschedule_many(ids: list[int], run_at: datetime, *, now: datetime | None = None) -> list[int]:
    """Move the scheduled or retrying operations among ``ids`` to ``run_at`` (future, bounded); return the ids moved.

    Does not commit; rings each for its new time after the caller's commit.
    """
    now = now or utcnow()
    run_at = checked_run_at(run_at, now)
    moved = (
        db.session.execute(
            update(Operation)
            .where(Operation.id.in_(ids), Operation.state.in_(_may_become(State.SCHEDULED, among=ADMIN_MOVABLE)))
            .values(state=State.SCHEDULED.value, run_at=run_at, next_attempt_at=run_at, enqueued_at=now, updated_at=now)
            .returning(Operation.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    for operation_id in moved:
        ring_after_commit(db.session, operation_id, run_at, stamp=now)
    return list(moved)


def cancel_many(ids: list[int], *, by: str | None = None, now: datetime | None = None) -> list[int]:
    """Cancel the operations among ``ids`` that have not started; return the ids cancelled. Does not commit."""
    now = now or utcnow()
    return list(
        db.session.execute(
            update(Operation)
            .where(Operation.id.in_(ids), Operation.state.in_(_may_become(State.CANCELLED)))
            .values(
                state=State.CANCELLED.value,
                cancelled_at=now,
                updated_at=now,
                resolution_note=f"cancelled by {by}" if by else None,
            )
            .returning(Operation.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )


def run_now(operation_id: int, *, now: datetime | None = None) -> Operation:
    """Make a scheduled or retrying operation due now and ring the worker. Commits.

    :class:`OperationError` if it is in any other state (a worker claimed it first, it finished...).
    """
    if not run_now_many([operation_id], now=now):
        db.session.rollback()
        operation = get_operation(operation_id)
        raise OperationError(f"operation {operation_id} is {operation.state}; only scheduled or retrying ones run now")
    db.session.commit()
    return get_operation(operation_id)


def reschedule_waiting(operation_id: int, run_at: datetime, *, now: datetime | None = None) -> Operation:
    """An admin's reschedule: a scheduled or retrying operation moves to ``run_at`` (future, bounded). Commits.

    :class:`InvalidArgument` for a time in the past or too far ahead, :class:`OperationError`
    for an operation in another state.
    """
    if not reschedule_many([operation_id], run_at, now=now):
        db.session.rollback()
        operation = get_operation(operation_id)
        raise OperationError(
            f"operation {operation_id} is {operation.state}; only scheduled or retrying ones can be rescheduled"
        )
    db.session.commit()
    return get_operation(operation_id)
