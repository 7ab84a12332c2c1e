"""The engine's services in-process, on both backends, with an injected clock and no worker.

``runner.execute`` is driven directly; time is a fixed ``T0`` plus offsets, so retry times,
leases and reconciler windows are checked exactly instead of waited for.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from tasks.runtime import run_periodic_jobs
from tests.support.polling import wait_for
from tests.support.reads import attempts_of, detached, load
from webapp.domain.errors import Deferral, PermanentError
from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.retry import RetryPolicy
from webapp.domain.states import can_transition
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun, Operation, OperationAttempt, PeriodicJob
from webapp.services.engine import doorbell, operations, periodic, reconciler, runner
from webapp.services.engine.registry import handler
from webapp.services.engine.runner import RunResult

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2030, 1, 1, 12, 0, 0)
TICK_ORDER = ["reconciler", "auto_requeue", "cleanup", "daily_report", "checks"]
LEASE = 30
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=2), cap=timedelta(seconds=10))

# Per idempotency key, what the scripted handler does on each successive call.
SCRIPTS: dict[str, list] = {}


class Boom(Exception):
    """A handler failure of no special kind: transient."""


@handler("svc.script", kind="job", policy=POLICY, lease_seconds=LEASE)
def scripted(ctx):
    """Write what the payload asks for, then act out the next step of the key's script."""
    steps = SCRIPTS.get(ctx.idempotency_key) or []
    step = steps.pop(0) if steps else ("ok",)
    action = step[0]
    if action == "steal":
        # Another worker's reconciler decides this attempt's lease expired while it runs.
        reconciler.reconcile(step[1])
    if ctx.payload.get("write"):
        db.session.add(PeriodicJob(name=ctx.payload["write"]))
    if action == "transient":
        raise Boom(f"boom on attempt {ctx.attempt}")
    if action == "permanent":
        raise PermanentError("address rejected")
    if action == "defer":
        raise Deferral(step[1], "rate limited")


# --- helpers ------------------------------------------------------------------------------


def new_op(key: str, *steps, run_at=None, now=T0, **payload) -> int:
    """Create and commit a scripted operation; return its id."""
    SCRIPTS[key] = list(steps)
    operation = operations.create_operation("svc.script", payload, idempotency_key=key, run_at=run_at, now=now)
    db.session.commit()
    return operation.id


def job_row(name: str) -> PeriodicJob | None:
    return detached(lambda: db.session.get(PeriodicJob, name))


def count_ops(key: str) -> int:
    return detached(
        lambda: db.session.execute(
            select(func.count()).select_from(Operation).where(Operation.idempotency_key == key)
        ).scalar()
    )


def run_in_thread(app, fn, *args):
    """Run ``fn`` in a thread with its own app context (so its own session); return (thread, box)."""
    box: dict = {}

    def target():
        with app.app_context():
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # reported by the test, not lost in the thread
                box["error"] = exc
            finally:
                db.session.remove()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def result_of(thread, box, timeout: float = 30):
    thread.join(timeout)
    assert not thread.is_alive(), "thread did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


class RecordingDoorbell:
    """Remembers every ring instead of enqueueing."""

    def __init__(self):
        self.rings: list[tuple[int, datetime | None]] = []

    def ring(self, operation_id, eta=None):
        self.rings.append((operation_id, eta))

    def depth(self):
        return {"pending": len(self.rings), "scheduled": 0}

    def ids(self) -> list[int]:
        return [operation_id for operation_id, _ in self.rings]


@pytest.fixture
def bell():
    """A recording doorbell in place of the app's; the previous one is restored afterwards."""
    previous = doorbell.get_doorbell()
    recorder = RecordingDoorbell()
    doorbell.set_doorbell(recorder)
    yield recorder
    doorbell.set_doorbell(previous)


@pytest.fixture
def outcomes():
    """Every (operation id, state, attempts, outcome) an outcome listener is shown."""
    seen: list[tuple] = []

    def listener(operation, outcome):
        seen.append((operation.id, operation.state, operation.attempts, outcome))
        # Listener writes commit with the outcome they observe.
        db.session.add(PeriodicJob(name=f"listener-{operation.id}-{outcome}-{len(seen)}"))

    runner.on_outcome(listener)
    yield seen
    runner.outcome_listeners.remove(listener)


# --- create_operation and the doorbell ------------------------------------------------------


def test_create_is_idempotent_on_its_key(app, bell):
    first = operations.create_operation("svc.script", {"n": 1}, idempotency_key="same", subject="cust-1", now=T0)
    again = operations.create_operation("svc.script", {"n": 2}, idempotency_key="same", now=T0)
    assert again is first
    db.session.commit()
    after_commit = operations.create_operation("svc.script", {"n": 3}, idempotency_key="same")
    db.session.commit()

    first_id = first.id
    assert after_commit.id == first_id
    assert count_ops("same") == 1
    stored = load(first_id)
    assert stored.payload == {"n": 1} and stored.subject == "cust-1"
    assert (stored.state, stored.kind, stored.attempts, stored.max_attempts) == ("pending", "job", 0, 3)
    assert stored.next_attempt_at == T0
    assert bell.ids() == [first_id]


def test_create_is_idempotent_against_an_uncommitted_twin_in_another_session(app, backend, bell):
    created, release = threading.Event(), threading.Event()

    def first():
        operation = operations.create_operation("svc.script", {"who": "first"}, idempotency_key="twin", now=T0)
        db.session.flush()
        created.set()
        assert release.wait(20)
        db.session.commit()
        return operation.id

    def second():
        operation = operations.create_operation("svc.script", {"who": "second"}, idempotency_key="twin", now=T0)
        db.session.commit()
        return operation.id

    first_thread, first_box = run_in_thread(app, first)
    assert created.wait(20)
    second_thread, second_box = run_in_thread(app, second)
    if backend.name == "postgres":
        # The twin's INSERT waits on the first transaction's unique key: the race really happens.
        wait_for(_someone_waits_on_a_lock, message="the second insert to wait on the first")
    else:
        # SQLite serialises writers: the twin cannot even begin while the first is uncommitted.
        second_thread.join(0.3)
    assert second_thread.is_alive(), "the twin finished while the first was uncommitted"
    release.set()

    assert result_of(second_thread, second_box) == result_of(first_thread, first_box)
    assert count_ops("twin") == 1
    assert load(first_box["value"]).payload == {"who": "first"}
    assert bell.ids() == [first_box["value"]]


def _someone_waits_on_a_lock() -> bool:
    return (
        detached(
            lambda: db.session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar()
        )
        > 0
    )


def test_rolled_back_transaction_never_rings(app, bell):
    operations.create_operation("svc.script", {}, idempotency_key="rolled-back", now=T0)
    db.session.rollback()
    kept = operations.create_operation("svc.script", {}, idempotency_key="kept", now=T0)
    db.session.commit()

    assert bell.ids() == [kept.id]
    assert count_ops("rolled-back") == 0


def test_closed_session_forgets_its_rings(app, bell):
    operations.create_operation("svc.script", {}, idempotency_key="closed", now=T0)
    db.session.close()
    kept = operations.create_operation("svc.script", {}, idempotency_key="kept", now=T0)
    db.session.commit()

    assert bell.ids() == [kept.id]


def test_rolled_back_savepoint_never_rings(app, bell):
    try:
        with db.session.begin_nested():
            operations.create_operation("svc.script", {}, idempotency_key="in-savepoint", now=T0)
            raise Boom("the business step failed")
    except Boom:
        pass
    kept = operations.create_operation("svc.script", {}, idempotency_key="kept", now=T0)
    db.session.commit()

    assert bell.ids() == [kept.id]
    assert count_ops("in-savepoint") == 0


def test_commit_rings_exactly_once_and_scheduled_rings_for_its_time(app, bell):
    now_op = operations.create_operation("svc.script", {}, idempotency_key="now", now=T0)
    later = operations.create_operation(
        "svc.script", {}, idempotency_key="later", now=T0, run_at=(T0 + timedelta(hours=1)).replace(tzinfo=UTC)
    )
    assert bell.rings == []  # nothing before the commit
    db.session.commit()
    db.session.commit()  # an empty commit rings nothing more

    assert sorted(bell.rings) == sorted([(now_op.id, None), (later.id, T0 + timedelta(hours=1))])
    stored = load(later.id)
    assert stored.state == "scheduled" and stored.run_at == stored.next_attempt_at == T0 + timedelta(hours=1)


def test_a_queue_that_is_down_does_not_fail_the_commit(app):
    class DeadQueue:
        def ring(self, operation_id, eta=None):
            raise ConnectionError("queue unreachable")

        def depth(self):
            raise ConnectionError("queue unreachable")

    previous, failed_before = doorbell.get_doorbell(), doorbell.RingStats.failed
    doorbell.set_doorbell(DeadQueue())
    try:
        operation_id = new_op("queue-down")
    finally:
        doorbell.set_doorbell(previous)

    assert doorbell.RingStats.failed == failed_before + 1
    assert load(operation_id).state == "pending"


# --- claim ---------------------------------------------------------------------------------


def test_two_concurrent_claims_of_one_due_operation_one_wins(app):
    operation_id = new_op("claim-race")
    barrier = threading.Barrier(2)

    def claim_once():
        barrier.wait(timeout=20)
        return runner.claim(operation_id, now=T0 + timedelta(seconds=1))

    runs = [run_in_thread(app, claim_once) for _ in range(2)]
    results = [result_of(*run) for run in runs]

    winners = [r for r in results if not isinstance(r, RunResult)]
    losers = [r for r in results if isinstance(r, RunResult)]
    assert len(winners) == 1 and [r.outcome for r in losers] == ["not_claimed"]
    operation = load(operation_id)
    assert operation.state == "running" and operation.attempts == 1
    assert operation.lease_expires_at == T0 + timedelta(seconds=1 + LEASE)
    assert len(attempts_of(operation_id)) == 1


def test_not_yet_due_operation_is_not_claimed(app):
    operation_id = new_op("not-due", run_at=T0 + timedelta(minutes=5))

    result = runner.execute(operation_id, now=T0 + timedelta(minutes=4), clock=lambda: T0)

    assert (result.outcome, result.due_at) == ("not_claimed", T0 + timedelta(minutes=5))
    assert load(operation_id).state == "scheduled" and attempts_of(operation_id) == []
    # At its time, a claim takes the scheduled operation straight to running.
    assert runner.execute(operation_id, now=T0 + timedelta(minutes=5)).outcome == "succeeded"


def test_cancelled_operation_is_never_claimed(app):
    operation_id = new_op("cancel-me", run_at=T0 + timedelta(minutes=5))
    operations.cancel(operation_id, by="admin@example.com", now=T0)

    result = runner.execute(operation_id, now=T0 + timedelta(days=1))

    assert (result.outcome, result.due_at) == ("not_claimed", None)
    assert attempts_of(operation_id) == []


def test_missing_operation(app):
    assert runner.execute(987654, now=T0).outcome == "missing"


# --- outcomes ------------------------------------------------------------------------------


def test_success_writes_state_attempt_and_handler_writes_together(app, outcomes):
    operation_id = new_op("ok", write="written-on-success")
    finished = T0 + timedelta(seconds=3)

    result = runner.execute(operation_id, now=T0, clock=lambda: finished)

    assert (result.outcome, result.attempt) == ("succeeded", 1)
    operation = load(operation_id)
    assert (operation.state, operation.attempts, operation.succeeded_at) == ("succeeded", 1, finished)
    assert operation.lease_expires_at is None and operation.last_attempt_at == T0
    [attempt] = attempts_of(operation_id)
    assert (attempt.number, attempt.outcome, attempt.started_at, attempt.finished_at) == (1, "succeeded", T0, finished)
    assert attempt.duration_ms >= 0 and attempt.worker
    assert (attempt.error_class, attempt.error_message, attempt.error_stack) == (None, None, None)
    assert job_row("written-on-success") is not None
    assert outcomes == [(operation_id, "succeeded", 1, "succeeded")]
    assert job_row(f"listener-{operation_id}-succeeded-1") is not None


def test_transient_failure_retries_within_policy_and_rolls_back_handler_writes(app, outcomes):
    operation_id = new_op("flaky", ("transient",), write="written-then-rolled-back")

    result = runner.execute(operation_id, now=T0, clock=lambda: T0)

    operation = load(operation_id)
    assert result.outcome == "retrying" and result.due_at == operation.next_attempt_at
    assert (operation.state, operation.attempts, operation.error_kind) == ("retrying", 1, "transient")
    assert T0 <= operation.next_attempt_at <= T0 + POLICY.ceiling(1)
    assert operation.error_class == "tests.test_services.Boom"
    assert operation.error_message == "boom on attempt 1"
    assert "Traceback" in operation.error_stack and "Boom: boom on attempt 1" in operation.error_stack
    [attempt] = attempts_of(operation_id)
    assert (attempt.outcome, attempt.error_class, attempt.error_message) == (
        "failed",
        "tests.test_services.Boom",
        "boom on attempt 1",
    )
    assert "Boom" in attempt.error_stack and attempt.finished_at == T0 and attempt.duration_ms >= 0
    assert job_row("written-then-rolled-back") is None
    assert outcomes == [(operation_id, "retrying", 1, "retrying")]

    # Not before its time; at its time, the next attempt runs and its writes commit.
    assert (
        runner.execute(operation_id, now=operation.next_attempt_at - timedelta(milliseconds=1)).outcome == "not_claimed"
    )
    assert runner.execute(operation_id, now=operation.next_attempt_at).outcome == "succeeded"
    assert job_row("written-then-rolled-back") is not None
    assert [a.outcome for a in attempts_of(operation_id)] == ["failed", "succeeded"]


def test_exhausted_attempts_dead_letter(app, outcomes):
    operation_id = new_op("exhaust", ("transient",), ("transient",), ("transient",), ("ok",))
    now = T0
    for number in (1, 2):
        result = runner.execute(operation_id, now=now, clock=lambda: now)
        assert result.outcome == "retrying"
        operation = load(operation_id)
        assert now <= operation.next_attempt_at <= now + POLICY.ceiling(number)
        now = operation.next_attempt_at

    result = runner.execute(operation_id, now=now, clock=lambda: now)

    operation = load(operation_id)
    assert (result.outcome, operation.state, operation.attempts, operation.dead_at) == ("dead", "dead", 3, now)
    assert operation.lease_expires_at is None
    assert [a.outcome for a in attempts_of(operation_id)] == ["failed", "failed", "dead"]
    assert [o[3] for o in outcomes] == ["retrying", "retrying", "dead"]
    assert runner.execute(operation_id, now=now + timedelta(days=1)).outcome == "not_claimed"


def test_permanent_error_is_dead_at_once(app, outcomes):
    operation_id = new_op("perm", ("permanent",))

    result = runner.execute(operation_id, now=T0, clock=lambda: T0)

    operation = load(operation_id)
    assert (result.outcome, operation.state, operation.attempts) == ("dead", "dead", 1)
    assert (operation.error_kind, operation.error_message) == ("permanent", "address rejected")
    assert operation.error_class == "webapp.domain.errors.PermanentError"
    assert [a.outcome for a in attempts_of(operation_id)] == ["dead"]
    assert outcomes == [(operation_id, "dead", 1, "dead")]


def test_deferral_does_not_consume_an_attempt(app, outcomes):
    later = T0 + timedelta(minutes=2)
    # Two failures use two of three attempts; a deferral on the third gives it back.
    operation_id = new_op("defer", ("transient",), ("transient",), ("defer", later.replace(tzinfo=UTC)), ("transient",))
    now = T0
    for _ in range(2):
        runner.execute(operation_id, now=now, clock=lambda: now)
        now = load(operation_id).next_attempt_at

    result = runner.execute(operation_id, now=now, clock=lambda: now)

    operation = load(operation_id)
    assert (result.outcome, result.due_at) == ("deferred", later)
    assert (operation.state, operation.attempts, operation.next_attempt_at) == ("retrying", 2, later)
    assert operation.error_kind == "deferred" and operation.error_message == "rate limited"
    deferred = attempts_of(operation_id)[-1]
    assert (deferred.number, deferred.outcome, deferred.error_message) == (3, "deferred", "rate limited")
    assert outcomes[-1] == (operation_id, "retrying", 2, "deferred")

    # The third attempt is still available: it runs (and, failing, dead-letters).
    assert runner.execute(operation_id, now=later, clock=lambda: later).outcome == "dead"
    assert [(a.number, a.outcome) for a in attempts_of(operation_id)] == [
        (1, "failed"),
        (2, "failed"),
        (3, "deferred"),
        (3, "dead"),
    ]


def test_the_engine_stores_the_error_fingerprint_with_the_failure(app, monkeypatch):
    monkeypatch.setattr(runner, "outcome_listeners", [])  # the write is the engine's own, not a listener's
    operation_id = new_op("fingerprinted", ("transient",), ("permanent",))

    runner.execute(operation_id, now=T0, clock=lambda: T0)
    retrying = load(operation_id)
    runner.execute(operation_id, now=retrying.next_attempt_at, clock=lambda: retrying.next_attempt_at)
    dead = load(operation_id)

    assert retrying.error_fingerprint == fingerprint_of(retrying.error_class, "boom on attempt 1")
    assert retrying.error_fingerprint == fingerprint_of(retrying.error_class, "boom on attempt 7")  # numbers vary
    assert dead.error_fingerprint == fingerprint_of("webapp.domain.errors.PermanentError", "address rejected")


def test_deferral_into_the_past_is_due_now(app):
    operation_id = new_op("defer-past", ("defer", T0 - timedelta(hours=1)))

    result = runner.execute(operation_id, now=T0, clock=lambda: T0)

    assert result.outcome == "deferred" and load(operation_id).next_attempt_at == T0


def test_unknown_handler_is_a_permanent_failure(app):
    operation_id = new_op("renamed")
    db.session.execute(update(Operation).where(Operation.id == operation_id).values(name="no.such.handler"))
    db.session.commit()

    assert runner.execute(operation_id, now=T0, clock=lambda: T0).outcome == "dead"
    assert "no handler registered" in load(operation_id).error_message


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_outcome(app, outcomes):
    stolen_at = T0 + timedelta(seconds=LEASE + 1)
    operation_id = new_op("stolen", ("steal", stolen_at), write="written-by-late-worker")

    result = runner.execute(operation_id, now=T0, clock=lambda: stolen_at)

    assert result.outcome == "lost_lease"
    operation = load(operation_id)
    assert (operation.state, operation.attempts) == ("retrying", 1)
    assert [a.outcome for a in attempts_of(operation_id)] == ["crashed"]
    assert job_row("written-by-late-worker") is None
    assert [o[3] for o in outcomes] == ["retrying"]


# --- admin actions -------------------------------------------------------------------------


def _dead_op(key: str) -> int:
    operation_id = new_op(key, ("permanent",))
    runner.execute(operation_id, now=T0, clock=lambda: T0)
    return operation_id


def test_retry_dead_brings_it_back_and_it_can_succeed(app, bell):
    operation_id = _dead_op("retry-me")
    bell.rings.clear()
    now = T0 + timedelta(hours=1)

    retried = operations.retry_dead(operation_id, by="admin@example.com", now=now)

    assert (retried.state, retried.attempts, retried.max_attempts) == ("pending", 1, 2)
    assert (retried.next_attempt_at, retried.dead_at) == (now, None)
    assert retried.resolution_note == "retried by admin@example.com"
    assert bell.ids() == [operation_id]
    assert runner.execute(operation_id, now=now, clock=lambda: now).outcome == "succeeded"
    assert load(operation_id).attempts == 2


def test_retry_dead_refuses_other_states(app):
    pending = new_op("still-pending")
    with pytest.raises(operations.OperationError, match="not dead"):
        operations.retry_dead(pending)
    with pytest.raises(operations.OperationNotFound):
        operations.retry_dead(424242)


def test_resolve_records_who_when_and_why(app):
    operation_id = _dead_op("resolve-me")
    now = T0 + timedelta(hours=2)

    resolved = operations.resolve(operation_id, by="ops@example.com", note="  refunded by hand  ", now=now)

    stored = load(operation_id)
    assert resolved.id == operation_id
    assert (stored.state, stored.resolved_at, stored.resolved_by, stored.resolution_note) == (
        "dead",
        now,
        "ops@example.com",
        "refunded by hand",
    )
    with pytest.raises(operations.OperationError, match="already resolved"):
        operations.resolve(operation_id, by="ops@example.com")
    with pytest.raises(operations.OperationError, match="only dead"):
        operations.resolve(new_op("not-dead"), by="ops@example.com")
    with pytest.raises(operations.OperationNotFound):
        operations.resolve(424242, by="ops@example.com")


def test_cancel_a_scheduled_operation(app):
    operation_id = new_op("cancel-sched", run_at=T0 + timedelta(hours=1))

    cancelled = operations.cancel(operation_id, by="admin", now=T0)

    assert (cancelled.state, cancelled.cancelled_at, cancelled.resolution_note) == (
        "cancelled",
        T0,
        "cancelled by admin",
    )
    with pytest.raises(operations.OperationError, match="cancelled and cannot be cancelled"):
        operations.cancel(operation_id)
    with pytest.raises(operations.OperationNotFound):
        operations.cancel(424242)


@pytest.mark.parametrize("setup", ["running", "succeeded", "dead"])
def test_cancel_refuses_operations_that_started(app, setup):
    operation_id = new_op(f"cancel-{setup}", *([("permanent",)] if setup == "dead" else []))
    if setup == "running":
        runner.claim(operation_id, now=T0)
    else:
        runner.execute(operation_id, now=T0, clock=lambda: T0)

    with pytest.raises(operations.OperationError, match=f"is {setup}"):
        operations.cancel(operation_id, now=T0)
    assert load(operation_id).state == setup


def test_reschedule_moves_the_run_time(app, bell):
    operation_id = new_op("move-me", run_at=T0 + timedelta(hours=1))
    bell.rings.clear()
    new_time = T0 + timedelta(hours=3)

    moved = operations.reschedule(operation_id, new_time.replace(tzinfo=UTC), now=T0)

    assert (moved.state, moved.run_at, moved.next_attempt_at) == ("scheduled", new_time, new_time)
    assert bell.rings == [(operation_id, new_time)]
    assert runner.execute(operation_id, now=T0 + timedelta(hours=2)).outcome == "not_claimed"
    assert runner.execute(operation_id, now=new_time).outcome == "succeeded"


def test_reschedule_to_the_past_makes_it_due_now(app, bell):
    operation_id = new_op("run-now", run_at=T0 + timedelta(hours=1))

    moved = operations.reschedule(operation_id, T0 - timedelta(minutes=1), now=T0)

    assert moved.state == "pending" and moved.next_attempt_at == T0 - timedelta(minutes=1)
    assert bell.rings[-1] == (operation_id, None)


def test_reschedule_refuses_finished_operations(app):
    operation_id = new_op("done")
    runner.execute(operation_id, now=T0, clock=lambda: T0)
    with pytest.raises(operations.OperationError, match="succeeded and cannot be rescheduled"):
        operations.reschedule(operation_id, T0 + timedelta(hours=1), now=T0)
    with pytest.raises(operations.OperationNotFound):
        operations.reschedule(424242, T0, now=T0)


STARTS = ["scheduled", "pending", "retrying", "running", "succeeded", "dead", "cancelled"]


def _op_in_state(state: str) -> int:
    """An operation brought to ``state`` through the services themselves."""
    steps = {"retrying": [("transient",)], "dead": [("permanent",)]}.get(state, [])
    operation_id = new_op(
        f"in-{state}", *steps, run_at=T0 + timedelta(hours=1) if state in ("scheduled", "cancelled") else None
    )
    if state in ("retrying", "succeeded", "dead"):
        runner.execute(operation_id, now=T0, clock=lambda: T0)
    elif state == "running":
        runner.claim(operation_id, now=T0)
    elif state == "cancelled":
        operations.cancel(operation_id, now=T0)
    assert load(operation_id).state == state
    return operation_id


ACTIONS = {
    "cancel": lambda op_id: operations.cancel(op_id, now=T0),
    "reschedule-later": lambda op_id: operations.reschedule(op_id, T0 + timedelta(days=1), now=T0),
    "reschedule-now": lambda op_id: operations.reschedule(op_id, T0, now=T0),
    "retry": lambda op_id: operations.retry_dead(op_id, now=T0),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("start", STARTS)
def test_admin_actions_move_only_along_the_diagram(sqlite_app, start, action):
    """Each action either makes a move the domain allows, or refuses and changes nothing."""
    operation_id = _op_in_state(start)
    before = load(operation_id)
    try:
        ACTIONS[action](operation_id)
    except operations.OperationError:
        after = load(operation_id)
        assert (after.state, after.attempts, after.next_attempt_at) == (
            before.state,
            before.attempts,
            before.next_attempt_at,
        )
        # Refused only when no allowed move exists for this action from here.
        assert start not in {"scheduled", "pending", "retrying"} or action == "retry"
        return
    after = load(operation_id)
    assert can_transition(before.state, after.state), (before.state, after.state)


# --- the Huey side of the doorbell ------------------------------------------------------------


def test_huey_gets_the_exact_utc_eta_whatever_the_local_time_zone(sqlite_app, tmp_path, monkeypatch):
    import time

    from huey import SqliteHuey

    from tasks.queue import HueyDoorbell
    from tasks.runtime import register_tasks

    huey = SqliteHuey("eta-test", filename=str(tmp_path / "eta.sqlite3"), results=False)
    bell = HueyDoorbell(huey, register_tasks(huey, sqlite_app))
    eta = datetime(2030, 1, 1, 12, 0, 5, 615000)  # naive UTC, with a fraction of a second
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # nine hours east: a naive eta read as local is 9 h early
    time.tzset()
    try:
        bell.ring(7, eta)
        [task] = huey.pending()  # a worker holds it back (in Huey's schedule) until its eta
        assert task.args == (7,) and task.eta == eta
        # Not runnable a moment before its time; runnable at it.
        assert not huey.ready_to_run(task, eta - timedelta(milliseconds=100))
        assert huey.ready_to_run(task, eta)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_early_delivery_rings_again_for_the_due_time(app, bell):
    from tasks.runtime import run_and_reschedule

    due = T0 + timedelta(seconds=10)
    operation_id = new_op("early", run_at=due)
    bell.rings.clear()

    def clock(*times):
        values = iter(times)
        return lambda: next(values)

    result = run_and_reschedule(
        operation_id, lease=LEASE, clock=clock(due - timedelta(seconds=1), due - timedelta(seconds=0.5))
    )
    assert (result.outcome, bell.rings) == ("not_claimed", [(operation_id, due)])

    # Due time passed while this delivery looked: ring at once, don't drop it.
    result = run_and_reschedule(
        operation_id, lease=LEASE, clock=clock(due - timedelta(milliseconds=1), due + timedelta(milliseconds=1))
    )
    assert (result.outcome, bell.rings[-1]) == ("not_claimed", (operation_id, None))

    # A cancelled operation is not rung for.
    operations.cancel(operation_id, now=T0)
    bell.rings.clear()
    assert run_and_reschedule(operation_id, lease=LEASE, clock=clock(T0, T0)).outcome == "not_claimed"
    assert bell.rings == []


# --- an interrupted worker gives its attempt back (tasks.runtime's SIGNAL_INTERRUPTED handler) ---


def test_interrupted_attempt_is_put_back_without_using_it_up(app, bell):
    from tasks.runtime import put_back_running

    operation_id = new_op("interrupted")
    runner.claim(operation_id, now=T0)
    bell.rings.clear()

    assert put_back_running(operation_id) is True

    operation = load(operation_id)
    assert (operation.state, operation.attempts, operation.lease_expires_at) == ("pending", 0, None)
    [attempt] = attempts_of(operation_id)
    assert (attempt.outcome, attempt.error_class, attempt.error_message) == (
        "interrupted",
        "Interrupted",
        "worker interrupted",
    )
    assert bell.ids() == [operation_id]
    assert put_back_running(operation_id) is False  # nothing running any more


def test_an_interrupted_duplicate_delivery_leaves_another_workers_attempt_alone(app):
    from tasks.runtime import put_back_running

    operation_id = new_op("held-elsewhere")
    runner.claim(operation_id, now=T0)
    db.session.execute(
        update(OperationAttempt)
        .where(OperationAttempt.operation_id == operation_id)
        .values(worker="another-host:4242:Worker-1")
    )
    db.session.commit()

    assert put_back_running(operation_id) is False
    assert load(operation_id).state == "running"
    assert [a.outcome for a in attempts_of(operation_id)] == ["running"]


# --- the reconciler ------------------------------------------------------------------------


def test_reconciler_recovers_an_expired_lease_as_a_crashed_attempt(app, outcomes):
    operation_id = new_op("crash")
    runner.claim(operation_id, now=T0)
    expiry = T0 + timedelta(seconds=LEASE)

    assert reconciler.reconcile(expiry - timedelta(seconds=1)).recovered == 0
    assert load(operation_id).state == "running"
    report = reconciler.reconcile(expiry + timedelta(seconds=1))

    assert report.recovered == 1
    operation = load(operation_id)
    now = expiry + timedelta(seconds=1)
    assert (operation.state, operation.attempts, operation.lease_expires_at) == ("retrying", 1, None)
    assert now <= operation.next_attempt_at <= now + POLICY.ceiling(1)
    [attempt] = attempts_of(operation_id)
    assert attempt.outcome == "crashed" and attempt.finished_at == now
    assert attempt.error_class.endswith("WorkerCrashed") and "lease expired" in attempt.error_message
    assert attempt.duration_ms == (LEASE + 1) * 1000
    assert outcomes == [(operation_id, "retrying", 1, "retrying")]
    # The retry then runs normally.
    assert runner.execute(operation_id, now=operation.next_attempt_at).outcome == "succeeded"


def test_reconciler_dead_letters_a_crash_when_attempts_are_exhausted(app):
    operation_id = new_op("crash-thrice")
    now = T0
    for _ in range(POLICY.max_attempts):
        runner.claim(operation_id, now=now)
        now += timedelta(seconds=LEASE + 1)
        assert reconciler.reconcile(now).recovered == 1
        now = max(now, load(operation_id).next_attempt_at or now)

    operation = load(operation_id)
    assert (operation.state, operation.attempts) == ("dead", 3)
    assert [a.outcome for a in attempts_of(operation_id)] == ["crashed", "crashed", "crashed"]


def test_reconciler_promotes_due_scheduled_operations(app, bell):
    operation_id = new_op("promote", run_at=T0 + timedelta(minutes=10))
    bell.rings.clear()

    assert reconciler.reconcile(T0 + timedelta(minutes=9)).promoted == 0
    assert load(operation_id).state == "scheduled" and bell.rings == []
    report = reconciler.reconcile(T0 + timedelta(minutes=10))

    assert report.promoted == 1
    assert load(operation_id).state == "pending"
    assert bell.ids() == [operation_id]


def test_reconciler_re_rings_overdue_operations_once_per_window(app, bell):
    operation_id = new_op("overdue")
    bell.rings.clear()
    window = 60

    def rung_at(seconds: float) -> int:
        return reconciler.reconcile(T0 + timedelta(seconds=seconds), redeliver_after=window).rung

    assert rung_at(30) == 0  # rung at creation; not overdue yet
    assert rung_at(61) == 1
    assert rung_at(62) == 0 and rung_at(120) == 0  # already re-rung in this window
    assert rung_at(122) == 1
    assert bell.ids() == [operation_id, operation_id]


def test_reconciler_works_in_bounded_batches(app, bell):
    ids = [new_op(f"batch-{n}") for n in range(5)]
    scheduled = [new_op(f"batch-s{n}", run_at=T0 + timedelta(seconds=10)) for n in range(3)]
    bell.rings.clear()
    later = T0 + timedelta(minutes=5)

    reports = [reconciler.reconcile(later, batch_size=2) for _ in range(4)]

    assert [r.promoted for r in reports] == [2, 1, 0, 0]
    # Promoted operations were just rung; only the five overdue ones are re-rung, two at a time.
    assert [r.rung for r in reports] == [2, 2, 1, 0]
    assert sorted(bell.ids()) == sorted(scheduled + ids)


def test_recovery_works_in_bounded_batches(app):
    for n in range(3):
        runner.claim(new_op(f"lease-{n}"), now=T0)
    later = T0 + timedelta(minutes=5)

    assert [reconciler.recover_expired_leases(later, 2) for _ in range(3)] == [2, 1, 0]


# --- periodic jobs under a lease -------------------------------------------------------------


def test_second_concurrent_runner_gets_none_while_the_first_holds_the_lease(app):
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(now):
        calls.append("first")
        inside.set()
        assert release.wait(20)
        return "first done"

    def fast(now):
        calls.append("second")
        return "second done"

    first = run_in_thread(app, lambda: periodic.run_exclusive("job.lease", slow, interval_seconds=60, lease_seconds=30))
    assert inside.wait(20)
    second = run_in_thread(
        app, lambda: periodic.run_exclusive("job.lease", fast, interval_seconds=60, lease_seconds=30)
    )
    assert result_of(*second) is None
    release.set()

    run = result_of(*first)
    assert (run.outcome, run.summary) == ("ok", "first done")
    assert calls == ["first"]
    job = job_row("job.lease")
    assert job.lease_holder is None and job.runs == 1


def test_a_crashed_holders_lease_is_taken_over_after_it_expires(app):
    assert periodic.acquire_lease("job.crash", "ghost", ttl_seconds=30, now=T0, interval_seconds=60)
    ran: list[datetime] = []

    def record(now):
        ran.append(now)
        return "took over"

    assert (
        periodic.run_exclusive(
            "job.crash", record, interval_seconds=60, lease_seconds=30, clock=lambda: T0 + timedelta(seconds=29)
        )
        is None
    )
    run = periodic.run_exclusive(
        "job.crash", record, interval_seconds=60, lease_seconds=30, clock=lambda: T0 + timedelta(seconds=30)
    )

    assert run is not None and run.holder != "ghost" and run.summary == "took over"
    assert ran == [T0 + timedelta(seconds=30)]
    assert job_row("job.crash").lease_holder is None


def test_a_runner_that_waited_for_the_lease_does_not_run_the_job_again(app):
    """Runner B saw the job due, then runner A ran it to the end while B waited for the lock:
    B gets the free lease but must find the job no longer due (and record nothing stale)."""
    ran: list[str] = []
    calls = {"b": 0}

    def clock_of_b():
        calls["b"] += 1
        if calls["b"] == 2:  # B is about to take the lease: A gets there first and finishes
            periodic.run_exclusive(
                "job.race",
                lambda now: ran.append("a") or "a",
                interval_seconds=60,
                lease_seconds=30,
                clock=lambda: T0 + timedelta(seconds=1),
            )
        return T0 + timedelta(seconds=calls["b"] * 0.001)

    run = periodic.run_exclusive(
        "job.race", lambda now: ran.append("b") or "b", interval_seconds=60, lease_seconds=30, clock=clock_of_b
    )

    assert run is None and ran == ["a"]
    assert job_row("job.race").lease_holder is None and job_row("job.race").runs == 1


def test_run_records_heartbeat_and_history_and_respects_the_interval(app):
    now = {"t": T0}

    def tick(at):
        return f"ran at {at:%H:%M:%S}"

    def run():
        return periodic.run_exclusive("job.beat", tick, interval_seconds=60, lease_seconds=30, clock=lambda: now["t"])

    first = run()
    now["t"] = T0 + timedelta(seconds=30)
    skipped = run()
    now["t"] = T0 + timedelta(seconds=60)
    second = run()

    assert skipped is None
    assert (first.outcome, first.summary, first.started_at, first.finished_at) == ("ok", "ran at 12:00:00", T0, T0)
    assert first.duration_ms >= 0 and second.summary == "ran at 12:01:00"
    job = job_row("job.beat")
    assert (job.runs, job.last_finished_at, job.last_summary, job.last_error) == (2, now["t"], "ran at 12:01:00", None)
    assert periodic.heartbeat_age("job.beat", now["t"] + timedelta(seconds=5)) == 5.0
    assert periodic.heartbeat_age("job.never") is None
    runs = detached(lambda: db.session.execute(select(JobRun).where(JobRun.job_name == "job.beat")).scalars().all())
    assert len(runs) == 2


def test_a_failing_job_records_its_error_and_rolls_back_its_writes(app):
    def broken(now):
        db.session.add(PeriodicJob(name="written-by-broken-job"))
        db.session.flush()
        raise ValueError("sweep exploded")

    run = periodic.run_exclusive("job.broken", broken, interval_seconds=60, lease_seconds=30, clock=lambda: T0)

    assert (run.outcome, run.error, run.finished_at) == ("failed", "ValueError: sweep exploded", T0)
    job = job_row("job.broken")
    assert (job.last_error, job.last_finished_at, job.lease_holder, job.runs) == (
        "ValueError: sweep exploded",
        T0,
        None,
        1,
    )
    assert job_row("written-by-broken-job") is None


# --- the periodic-job registry and heartbeats ------------------------------------------------


@pytest.fixture
def no_jobs(monkeypatch):
    """An empty job registry for this test; the real one is back afterwards."""
    monkeypatch.setattr(periodic, "_jobs", {})


def test_every_periodic_job_registers_itself_in_tick_order():
    from webapp.services.maintenance import cleanup, requeue
    from webapp.services.monitoring import checks

    jobs = periodic.registered_jobs()

    assert [job.name for job in jobs] == TICK_ORDER
    assert [job.run for job in jobs] == [
        reconciler.periodic_pass,
        requeue.auto_requeue,
        cleanup.cleanup,
        checks.daily_report_job,
        checks.run_checks,
    ]
    assert periodic.get_job("cleanup").interval({"CLEANUP_INTERVAL_SECONDS": "3600"}) == 3600.0


def test_the_worker_tick_knows_every_job_without_importing_one():
    """The services package wires every job in: tasks.runtime itself imports none of them."""
    code = "import tasks.runtime\nfrom webapp.services.engine import periodic\n"
    code += "print(*(job.name for job in periodic.registered_jobs()))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == TICK_ORDER


def test_a_job_name_belongs_to_one_function(no_jobs):
    @periodic.periodic_job("job.same", interval="I", lease="L", order=1)
    def first(now, config):
        return None

    periodic.register_job(periodic.get_job("job.same"))  # the same function again: a no-op
    with pytest.raises(ValueError, match="job.same"):

        @periodic.periodic_job("job.same", interval="I", lease="L", order=2)
        def second(now, config):
            return None

    assert [job.run for job in periodic.registered_jobs()] == [first]


def test_a_tick_runs_the_registered_jobs_in_order_with_now_and_config(sqlite_app, no_jobs, monkeypatch):
    monkeypatch.setitem(sqlite_app.config, "TEST_INTERVAL_SECONDS", 60)
    monkeypatch.setitem(sqlite_app.config, "TEST_LEASE_SECONDS", 30)
    seen: list[tuple] = []

    @periodic.periodic_job("job.late", interval="TEST_INTERVAL_SECONDS", lease="TEST_LEASE_SECONDS", order=2)
    def late(now, config):
        seen.append(("late", type(now), config is sqlite_app.config))

    @periodic.periodic_job("job.early", interval="TEST_INTERVAL_SECONDS", lease="TEST_LEASE_SECONDS", order=1)
    def early(now, config):
        seen.append(("early", type(now), config is sqlite_app.config))
        return 3  # any summary is recorded as text

    run_periodic_jobs(sqlite_app)

    assert seen == [("early", datetime, True), ("late", datetime, True)]
    assert (job_row("job.early").last_summary, job_row("job.late").last_summary) == ("3", None)
    assert job_row("job.early").interval_seconds == 60


def test_heartbeats_judge_each_job_by_its_own_interval(sqlite_app, no_jobs):
    config = {"FAST_SECONDS": 60, "SLOW_SECONDS": 3600, "LEASE_SECONDS": 30, "JOB_STALE_AFTER_INTERVALS": 3}
    periodic.periodic_job("job.slow", interval="SLOW_SECONDS", lease="LEASE_SECONDS", order=2)(lambda now, c: "ok")
    fast = periodic.periodic_job("job.fast", interval="FAST_SECONDS", lease="LEASE_SECONDS", order=1)(
        lambda now, c: "ok"
    )
    periodic.run_exclusive(
        "job.fast", lambda now: fast(now, config), interval_seconds=60, lease_seconds=30, clock=lambda: T0
    )
    periodic.run_exclusive("job.gone", lambda now: "ok", interval_seconds=10, lease_seconds=30, clock=lambda: T0)

    beats = periodic.heartbeats(config, T0 + timedelta(seconds=150))

    # Registered jobs in tick order, then any job only the table knows (by the interval it ran with).
    assert [beat.name for beat in beats] == ["job.fast", "job.slow", "job.gone"]
    fast_beat, slow_beat, gone_beat = beats
    assert (fast_beat.heartbeat_age_seconds, fast_beat.stale_after_seconds, fast_beat.fresh) == (150.0, 180.0, True)
    assert (fast_beat.runs, fast_beat.last_finished_at, fast_beat.last_error) == (1, T0, None)
    assert (slow_beat.heartbeat_age_seconds, slow_beat.runs, slow_beat.stale) == (None, 0, True)
    assert (gone_beat.interval_seconds, gone_beat.stale_after_seconds, gone_beat.stale) == (10, 30.0, True)
    assert fast_beat.as_dict("fresh", "runs") == {"fresh": True, "runs": 1}
    assert set(fast_beat.as_dict()) == {
        "name",
        "interval_seconds",
        "stale_after_seconds",
        "heartbeat_age_seconds",
        "last_finished_at",
        "fresh",
        "runs",
        "last_error",
    }


def test_the_reconcile_command_runs_the_registered_reconciler_at_once(sqlite_app):
    cli = sqlite_app.test_cli_runner()

    first, second = cli.invoke(args=["reconcile"]), cli.invoke(args=["reconcile"])

    assert first.output == second.output == "ok: recovered=0 promoted=0 rung=0\n"
    assert job_row("reconciler").runs == 2  # however recent its last run
    assert periodic.acquire_lease("reconciler", "ghost", ttl_seconds=60, now=utcnow(), interval_seconds=0)
    held = cli.invoke(args=["reconcile"])
    assert held.exit_code == 1 and "another reconciler holds the lease" in held.output
