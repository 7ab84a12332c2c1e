"""Creating operations (idempotent, ringing only after commit) and the admin actions on them, with a fixed clock."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta

import pytest
from sqlalchemy import text

from tests.support.engine import (
    T0,
    Boom,
    count_ops,
    new_op,
    result_of,
    ringing_into,
    run_in_thread,
)
from tests.support.polling import wait_for
from tests.support.reads import detached, load
from webapp.domain.states import can_transition
from webapp.extensions import db
from webapp.services.engine import doorbell, operations, runner

# --- create_operation and the doorbell ------------------------------------------------------


def test_create_is_idempotent_on_its_key(app, bell):
    first = operations.create_operation("svc.script", {"n": 1}, idempotency_key="same", subject="cust-1", now=T0)
    again = operations.create_operation("svc.script", {"n": 2}, idempotency_key="same", now=T0)
    assert again.id == first.id and again.payload == {"n": 1}  # the first one's, not a second row
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
        def ring(self, operation_id, eta=None, stamp=None):
            raise ConnectionError("queue unreachable")

        def depth(self):
            raise ConnectionError("queue unreachable")

    failed_before = doorbell.RingStats.failed
    with ringing_into(DeadQueue()):
        operation_id = new_op("queue-down")

    assert doorbell.RingStats.failed == failed_before + 1
    assert load(operation_id).state == "pending"


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
