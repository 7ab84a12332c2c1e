"""The Huey side of the doorbell: exact ETAs, early deliveries, and interrupted workers giving their attempt back."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from tests.support.engine import (
    LEASE,
    T0,
    new_op,
)
from tests.support.reads import attempts_of, load
from webapp.extensions import db
from webapp.models import OperationAttempt
from webapp.services.engine import operations, runner

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
        bell.ring(7, eta, stamp=datetime(2030, 1, 1, 12, 0, 0))
        [task] = huey.pending()  # a worker holds it back (in Huey's schedule) until its eta
        assert task.args == (7, datetime(2030, 1, 1, 12, 0, 0)) and task.eta == eta
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
