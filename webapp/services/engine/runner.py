"""Running one operation: claim it, call its handler, write the outcome back.

The claim is a conditional UPDATE, so two deliveries of the same doorbell cannot both run
an operation. The handler's own database work and the ``succeeded`` outcome commit in one
transaction; a failure rolls the handler's work back and records the error in another.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import String, bindparam, case, func, insert, literal, or_, select, true, update

from webapp.config import default_of
from webapp.domain.errors import Deferral, PermanentError, classify
from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.results import bounded_result
from webapp.domain.retry import Decision, RetryPolicy
from webapp.domain.states import CLAIMABLE, State
from webapp.domain.time import as_naive_utc, utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, OperationPause
from webapp.services.engine import consumers
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.registry import HandlerContext, UnknownHandler, registry
from webapp.services.engine.sql import prepare, run_alone

log = logging.getLogger("backstop.engine")

MAX_MESSAGE = 4000
MAX_STACK = 20000
# For callers without an app config (the worker passes OPERATION_LEASE_SECONDS itself).
DEFAULT_LEASE_SECONDS = default_of("OPERATION_LEASE_SECONDS")
# The timer that measures attempts (seconds, monotonic); tests replace it to control durations.
monotonic = time.monotonic


# Functions called as ``listener(operation, outcome)`` inside the transaction that records an
# outcome ("succeeded", "retrying", "deferred", "dead"), so their writes commit with it
# (a purchase's fulfilment status, an alert operation). They must not do outside I/O.
outcome_listeners: list = []


def on_outcome(listener=None, *, outcomes: tuple[str, ...] | None = None, kinds: tuple[str, ...] | None = None):
    """Register ``listener(operation, outcome)``; usable as a decorator, bare or with filters.

    ``outcomes`` / ``kinds``: the only outcomes and operation kinds it is told about. Declaring
    them lets a success no listener wants commit as one statement on its own (see ``_finish``).
    """

    def register(function):
        function.outcomes = frozenset(outcomes) if outcomes is not None else None
        function.kinds = frozenset(kinds) if kinds is not None else None
        if function not in outcome_listeners:
            outcome_listeners.append(function)
        return function

    return register if listener is None else register(listener)


def _listeners_for(operation, outcome: str) -> list:
    """The listeners that want to hear of ``outcome`` for ``operation`` (all, if they did not say)."""
    return [
        listener
        for listener in outcome_listeners
        if (getattr(listener, "outcomes", None) is None or outcome in listener.outcomes)
        and (getattr(listener, "kinds", None) is None or operation.kind in listener.kinds)
    ]


def _notify(operation_id: int, outcome: str) -> None:
    if not outcome_listeners:
        return
    operation = db.session.get(Operation, operation_id, populate_existing=True)
    for listener in _listeners_for(operation, outcome):
        listener(operation, outcome)


def _notify_snapshot(operation: Snapshot, outcome: str, listeners: list, **changes) -> None:
    """Tell ``listeners`` about ``operation`` (a snapshot, not reloaded) as the outcome left it."""
    for key, value in changes.items():
        setattr(operation, key, value)
    for listener in listeners:
        listener(operation, outcome)


@dataclass(frozen=True)
class RunResult:
    """What happened when a worker was asked to run an operation."""

    operation_id: int
    outcome: str  # succeeded, retrying, deferred, dead, not_claimed, lost_lease, missing
    due_at: datetime | None = None
    attempt: int | None = None


def worker_identity() -> str:
    """Host, process and thread, recorded on attempts and leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"[:120]


def execute(operation_id: int, *, now=None, clock=utcnow, default_lease: float = DEFAULT_LEASE_SECONDS) -> RunResult:
    """Claim and run one operation if it is due; the whole life of one attempt."""
    started = now or clock()
    claimed = claim(operation_id, now=started, default_lease=default_lease)
    if isinstance(claimed, RunResult):
        return claimed
    operation, attempt = claimed
    # In memory only, for this consumer's heartbeat: no query on the hot path.
    consumers.note_running(attempt.worker, operation.id, operation.name, attempt.number, started)
    try:
        return _run_claimed(operation, attempt, clock)
    finally:
        consumers.note_finished(attempt.worker)


def claim(operation_id: int, *, now: datetime, default_lease: float = DEFAULT_LEASE_SECONDS):
    """Take an operation for this worker; returns ``(operation, attempt)`` or a RunResult.

    One short write transaction: the conditional UPDATE (which also returns the row) and the
    attempt's INSERT. The operation and attempt handed back are snapshots outside any session,
    so no transaction (on SQLite: no write lock) stays open while the handler works.
    """
    own_leases = registry.own_leases()
    worker = worker_identity()
    params = {
        "operation_id": operation_id,
        "now": now,
        "lease_until": now + timedelta(seconds=default_lease),
        "worker": worker,
    }
    for index, (_, seconds) in enumerate(own_leases):
        params[f"lease_until_{index}"] = now + timedelta(seconds=seconds)
    names = tuple(name for name, _ in own_leases)
    if db.engine.dialect.name == "postgresql":
        values = _claim_in_one_round_trip(names, params)
    else:
        values = _claim_in_one_transaction(names, params)
    if values is None:
        return _not_claimed(operation_id)
    attempt_id = values.pop("attempt_id")
    operation = Snapshot(values)
    attempt = Snapshot(
        {
            "id": attempt_id,
            "operation_id": operation_id,
            "number": operation.attempts,
            "started_at": now,
            "outcome": "running",
            "worker": worker,
        }
    )
    return operation, attempt


def _claim_in_one_transaction(names_with_own_lease: tuple[str, ...], params: dict) -> dict | None:
    """The claim's UPDATE and the attempt's INSERT, committed together (SQLite: no round trips to save)."""
    connection = db.session.connection()
    row = connection.execute(_claim_statement(names_with_own_lease), params).first()
    if row is None:
        db.session.rollback()
        return None
    values = dict(row._mapping)
    values["attempt_id"] = connection.execute(
        _INSERT_ATTEMPT,
        {
            "operation_id": values["id"],
            "number": values["attempts"],
            "started_at": params["now"],
            "outcome": "running",
            "worker": params["worker"],
        },
    ).scalar_one()
    db.session.commit()
    return values


def _claim_in_one_round_trip(names_with_own_lease: tuple[str, ...], params: dict) -> dict | None:
    """PostgreSQL: the claim, the attempt's INSERT and the commit as one statement in autocommit.

    One round trip instead of five (BEGIN, SET LOCAL, UPDATE, INSERT, COMMIT); the statement is
    its own transaction, so the claim is as atomic as before. The COMMIT does not wait for the
    disk: losing a claim costs nothing that a crash does not already cost. Only a PostgreSQL
    crash before the next flushed commit loses it, and the operation is then waiting again, as
    a crashed attempt would be after its lease. Every later durable commit (the email log's
    ``sent`` row, the outcome) flushes the claim's record before its own, and the outcome's
    COMMIT still waits for the disk.
    """
    return run_alone(prepare(_claim_with_attempt_statement(names_with_own_lease), db.engine.dialect), params)


@lru_cache(maxsize=16)
def _claim_with_attempt_statement(names_with_own_lease: tuple[str, ...]):
    """PostgreSQL: ``WITH claimed AS (UPDATE ... RETURNING *), attempt AS (INSERT ... SELECT FROM
    claimed RETURNING id) SELECT claimed.*, attempt.id``, unflushed by ``set_config`` (local)."""
    claimed = _claim_statement(names_with_own_lease).cte("claimed")
    attempt = (
        insert(_ATTEMPTS)
        .from_select(
            ["operation_id", "number", "started_at", "outcome", "worker"],
            select(
                claimed.c.id,
                claimed.c.attempts,
                bindparam("now", type_=_ATTEMPTS.c.started_at.type),
                literal("running", String),
                bindparam("worker", type_=_ATTEMPTS.c.worker.type),
            ),
        )
        .returning(_ATTEMPTS.c.id)
        .cte("attempt")
    )
    unflushed = select(func.set_config("synchronous_commit", "off", True).label("setting")).cte("unflushed")
    return (
        select(*claimed.c, attempt.c.id.label("attempt_id"))
        .select_from(claimed)
        .join(attempt, true())
        .join(unflushed, true())
    )


class Snapshot:
    """A row's values as attributes, outside any session: what handlers and listeners read."""

    def __init__(self, values):
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Snapshot(id={self.__dict__.get('id')!r}, name={self.__dict__.get('name')!r})"


_OPERATIONS = Operation.__table__
_ATTEMPTS = OperationAttempt.__table__
# Executed with the values as parameters: operation_id, number, started_at, outcome, worker.
_INSERT_ATTEMPT = insert(_ATTEMPTS).returning(_ATTEMPTS.c.id)


@lru_cache(maxsize=16)
def _claim_statement(names_with_own_lease: tuple[str, ...]):
    """The claim as one prepared UPDATE ... RETURNING; built once per set of handler leases."""
    lease_type = _OPERATIONS.c.lease_expires_at.type
    lease_until = bindparam("lease_until", type_=lease_type)
    if names_with_own_lease:
        lease_until = case(
            *(
                (_OPERATIONS.c.name == name, bindparam(f"lease_until_{index}", type_=lease_type))
                for index, name in enumerate(names_with_own_lease)
            ),
            else_=lease_until,
        )
    now = bindparam("now", type_=_OPERATIONS.c.updated_at.type)
    return (
        update(_OPERATIONS)
        .where(
            _OPERATIONS.c.id == bindparam("operation_id"),
            # Three fixed parameters: an IN list is an "expanding" parameter, re-rendered per claim.
            or_(*(_OPERATIONS.c.state == s.value for s in CLAIMABLE)),
            _OPERATIONS.c.next_attempt_at <= now,
            _OPERATIONS.c.name.not_in(select(OperationPause.__table__.c.name)),  # a paused name waits
        )
        .values(
            state=State.RUNNING.value,
            attempts=_OPERATIONS.c.attempts + 1,
            lease_expires_at=lease_until,
            last_attempt_at=now,
            updated_at=now,
        )
        .returning(*_OPERATIONS.c)
    )


def _not_claimed(operation_id: int) -> RunResult:
    """Why a claim took nothing: no such operation, not due yet (with its time), or not waiting."""
    row = db.session.execute(
        select(_OPERATIONS.c.state, _OPERATIONS.c.next_attempt_at).where(_OPERATIONS.c.id == operation_id)
    ).one_or_none()
    db.session.rollback()
    if row is None:
        return RunResult(operation_id, "missing")
    waiting = row.state in {s.value for s in CLAIMABLE}
    return RunResult(operation_id, "not_claimed", due_at=row.next_attempt_at if waiting else None)


def _run_claimed(operation: Snapshot, attempt: Snapshot, clock) -> RunResult:
    operation_id, number, name = operation.id, attempt.number, operation.name
    started = monotonic()
    try:
        handler = registry.get(name)
        returned = handler.fn(HandlerContext(operation=operation, attempt=number, now=clock()))
        finished = clock()
        # The handler's summary rides in the success UPDATE (no extra statement), bounded so it cannot fail it.
        values = {
            "succeeded_at": finished,
            "lease_expires_at": None,
            "error_class": None,
            "error_kind": None,
            "result": bounded_result(returned),
        }
        listeners = _listeners_for(operation, "succeeded")
        # Nothing else to commit with it: on PostgreSQL the outcome can be a statement on its own.
        alone = not listeners and not _session_in_transaction() and db.engine.dialect.name == "postgresql"
        if not _finish(
            operation_id,
            number,
            State.SUCCEEDED,
            finished,
            started,
            "succeeded",
            extra=values,
            attempt_id=attempt.id,
            alone=alone,
        ):
            db.session.rollback()
            _log_attempt(operation_id, name, number, "lost_lease", started)
            return RunResult(operation_id, "lost_lease", attempt=number)
        _notify_snapshot(operation, "succeeded", listeners, state=State.SUCCEEDED.value, updated_at=finished, **values)
        if not alone:
            db.session.commit()
        _log_attempt(operation_id, name, number, "succeeded", started)
        return RunResult(operation_id, "succeeded", attempt=number)
    except Exception as exc:  # every handler failure is recorded, never propagated to Huey
        db.session.rollback()
        if isinstance(exc, UnknownHandler):
            exc = _permanent(exc)
        result = record_failure(operation_id, number, exc, now=clock(), started_monotonic=started)
        _log_attempt(operation_id, name, number, result.outcome, started, exc)
        return result


def _session_in_transaction() -> bool:
    """Whether this context's session holds a transaction (without making a session to ask)."""
    registry = db.session.registry
    return registry.has() and registry().in_transaction()


def _permanent(exc: Exception) -> Exception:
    wrapped = PermanentError(str(exc))
    wrapped.__cause__ = exc
    return wrapped


def record_failure(
    operation_id: int,
    number: int,
    exc: BaseException,
    *,
    now: datetime,
    started_monotonic: float | None = None,
    outcome_override: str | None = None,
) -> RunResult:
    """Write a failed attempt back: retry with backoff, defer, or dead-letter. Commits."""
    operation = db.session.get(Operation, operation_id, populate_existing=True)
    if operation is None or operation.state != State.RUNNING or operation.attempts != number:
        db.session.rollback()
        return RunResult(operation_id, "lost_lease", attempt=number)
    handler_policy = _policy_for(operation)
    kind = classify(exc)
    decision = handler_policy.decide(number, kind)
    message, stack = _describe(exc)
    error_class = _class_name(exc)
    values = {
        "error_class": error_class,
        "error_kind": kind.value,
        "error_message": message,
        "error_stack": stack,
        # Stored with the error, so the Issues view groups failures by an indexed column.
        "error_fingerprint": fingerprint_of(error_class, message),
        "lease_expires_at": None,
    }
    if decision == Decision.DEFER:
        due = max(as_naive_utc(exc.until), now) if isinstance(exc, Deferral) else now
        # A deferral gives the attempt back: it was not the handler's failure.
        values.update(attempts=number - 1, next_attempt_at=due, enqueued_at=now)
        target, outcome = State.RETRYING, "deferred"
    elif decision == Decision.RETRY:
        due = now + handler_policy.delay(number)
        values.update(next_attempt_at=due, enqueued_at=now)
        target, outcome = State.RETRYING, "failed"
    else:
        due = None
        values.update(dead_at=now)
        target, outcome = State.DEAD, "dead"
    result_outcome = {Decision.DEFER: "deferred", Decision.DEAD: "dead"}.get(decision, "retrying")
    outcome = outcome_override or outcome
    if not _finish(
        operation_id,
        number,
        target,
        now,
        started_monotonic,
        outcome,
        extra=values,
        error=(values["error_class"], message, stack),
    ):
        db.session.rollback()
        return RunResult(operation_id, "lost_lease", attempt=number)
    if due is not None:
        ring_after_commit(db.session, operation_id, due, stamp=now)
    _notify(operation_id, result_outcome)
    db.session.commit()
    return RunResult(operation_id, result_outcome, due_at=due, attempt=number)


def put_back(operation_id: int, number: int, *, now: datetime, reason: str) -> bool:
    """Return an interrupted operation to ``pending`` without using up its attempt. Commits."""
    values = {"attempts": number - 1, "next_attempt_at": now, "enqueued_at": now, "lease_expires_at": None}
    if not _finish(
        operation_id, number, State.PENDING, now, None, "interrupted", extra=values, error=("Interrupted", reason, None)
    ):
        db.session.rollback()
        return False
    ring_after_commit(db.session, operation_id, stamp=now)
    db.session.commit()
    return True


def _finish(
    operation_id: int,
    number: int,
    target: State,
    now: datetime,
    started_monotonic,
    outcome: str,
    *,
    extra: dict,
    error=(None, None, None),
    attempt_id: int | None = None,
    alone: bool = False,
) -> bool:
    """Move a running operation to ``target`` if this worker still holds it; close its attempt.

    ``alone`` (PostgreSQL): the caller's transaction holds nothing else, so the outcome is one
    statement committed on its own (one round trip instead of BEGIN, the statement, COMMIT),
    waiting for the disk as every outcome does.
    """
    params = {f"new_{key}": value for key, value in extra.items()}
    params.update(finishing_id=operation_id, finishing_attempt=number, new_state=target.value, new_updated_at=now)
    columns = tuple(sorted(extra))
    known = attempt_id is not None and started_monotonic is not None
    closing = _closed_attempt_values(attempt_id, outcome, now, started_monotonic, error) if known else None
    if known and alone:
        statement = prepare(_finish_and_close_statement(columns), db.engine.dialect)
        return run_alone(statement, params | closing)["finished"] == 1
    connection = db.session.connection()
    if known and connection.dialect.name == "postgresql":
        # One round trip: the attempt is closed in the statement that moves the operation.
        return connection.execute(_finish_and_close_statement(columns), params | closing).scalar_one() == 1
    if not connection.execute(_finish_statement(columns), params).rowcount:
        return False
    if known:
        connection.execute(_CLOSE_ATTEMPT, closing)
    else:
        close_attempt(operation_id, number, outcome, now, started_monotonic, error)
    return True


@lru_cache(maxsize=32)
def _finish_statement(changed_columns: tuple[str, ...]):
    """The conditional outcome UPDATE (still running, same attempt) for a set of changed columns."""
    columns = ("state", "updated_at", *changed_columns)
    return (
        update(_OPERATIONS)
        .where(
            # Not named like a column of operation_attempts: in the PostgreSQL statement that also
            # closes the attempt, SQLAlchemy would add such a parameter to that UPDATE's SET.
            _OPERATIONS.c.id == bindparam("finishing_id"),
            _OPERATIONS.c.state == State.RUNNING.value,
            _OPERATIONS.c.attempts == bindparam("finishing_attempt"),
        )
        .values({name: bindparam(f"new_{name}", type_=_OPERATIONS.c[name].type) for name in columns})
    )


_ATTEMPT_END = ("finished_at", "duration_ms", "outcome", "error_class", "error_message", "error_stack")
# Parameters named attempt_*: the outcome's UPDATE of the operation names its own new_*.
_CLOSE_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.id == bindparam("attempt_id"), _ATTEMPTS.c.finished_at.is_(None))
    .values({name: bindparam(f"attempt_{name}", type_=_ATTEMPTS.c[name].type) for name in _ATTEMPT_END})
)


@lru_cache(maxsize=32)
def _finish_and_close_statement(changed_columns: tuple[str, ...]):
    """PostgreSQL: ``WITH finished AS (the outcome's UPDATE RETURNING id), closed AS (the attempt's
    UPDATE, only if finished has a row) SELECT count(*) FROM finished``."""
    finished = _finish_statement(changed_columns).returning(_OPERATIONS.c.id).cte("finished")
    closed = _CLOSE_ATTEMPT.where(select(finished.c.id).exists()).cte("closed")
    # A data-modifying CTE runs to completion even though the SELECT does not read it.
    return select(func.count().label("finished")).select_from(finished).add_cte(closed)


def _closed_attempt_values(attempt_id: int, outcome: str, now: datetime, started_monotonic: float, error) -> dict:
    """The parameters of :data:`_CLOSE_ATTEMPT`: the end of the attempt this worker opened (id from the claim)."""
    error_class, error_message, error_stack = error
    return {
        "attempt_id": attempt_id,
        "attempt_finished_at": now,
        "attempt_duration_ms": int((monotonic() - started_monotonic) * 1000),
        "attempt_outcome": outcome,
        "attempt_error_class": error_class,
        "attempt_error_message": error_message,
        "attempt_error_stack": error_stack,
    }


def close_attempt(
    operation_id: int,
    number: int,
    outcome: str,
    now: datetime,
    started_monotonic: float | None,
    error=(None, None, None),
) -> None:
    """Write the end of an attempt row (outcome, duration, error)."""
    attempt = db.session.execute(
        select(OperationAttempt)
        .where(
            OperationAttempt.operation_id == operation_id,
            OperationAttempt.number == number,
            OperationAttempt.finished_at.is_(None),
        )
        .order_by(OperationAttempt.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if attempt is None:
        return
    if started_monotonic is not None:
        duration_ms = int((monotonic() - started_monotonic) * 1000)
    else:
        duration_ms = max(int((now - attempt.started_at).total_seconds() * 1000), 0)
    attempt.finished_at = now
    attempt.duration_ms = duration_ms
    attempt.outcome = outcome
    attempt.error_class, attempt.error_message, attempt.error_stack = error


def _policy_for(operation: Operation):
    try:
        policy = registry.get(operation.name).policy
    except UnknownHandler:
        policy = RetryPolicy()
    # The row's max_attempts wins: an admin retry raises it past the handler's default.
    if policy.max_attempts != operation.max_attempts:
        policy = replace(policy, max_attempts=operation.max_attempts)
    return policy


def _class_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return (cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}")[:200]


def _describe(exc: BaseException) -> tuple[str, str]:
    message = (str(exc) or type(exc).__name__)[:MAX_MESSAGE]
    stack = "".join(traceback.format_exception(exc))[-MAX_STACK:]
    return message, stack


def _log_attempt(
    operation_id: int, name: str, number: int, outcome: str, started: float, exc: BaseException | None = None
) -> None:
    duration_ms = int((monotonic() - started) * 1000)
    log.info(
        "operation %s %s attempt %s %s in %d ms",
        operation_id,
        name,
        number,
        outcome,
        duration_ms,
        extra={
            "operation_id": operation_id,
            "operation_name": name,
            "attempt": number,
            "outcome": outcome,
            "duration_ms": duration_ms,
            "error_class": _class_name(exc) if exc else None,
        },
    )
