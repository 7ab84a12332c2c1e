"""The foundation's promises, proven with real consumer processes on both backends."""

from __future__ import annotations

import signal
from datetime import timedelta
from itertools import pairwise

from sqlalchemy import select

from tests.conftest import make_app
from tests.support.polling import calls, wait_for, wait_state
from tests.support.reads import attempts_of, detached, load
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun
from webapp.services.engine import doorbell, operations

TERMINAL = {"succeeded", "dead", "cancelled"}


def create(name: str, key: str, **payload) -> int:
    """Create and commit one operation; return its id."""
    operation = operations.create_operation(name, payload, idempotency_key=key)
    db.session.commit()
    return operation.id


def test_fails_twice_then_succeeds_with_policy_spacing(app, backend, start_worker, tmp_path):
    start_worker(backend)
    log = tmp_path / "calls.log"
    operation_id = create("test.flaky", "flaky-1", fail_times=2, log=str(log))

    operation = wait_state(operation_id, TERMINAL)

    assert operation.state == "succeeded"
    assert operation.attempts == 3
    rows = attempts_of(operation_id)
    assert [row.outcome for row in rows] == ["failed", "failed", "succeeded"]
    assert all(row.finished_at and row.duration_ms is not None for row in rows)
    assert "flaky failure on attempt 1" in rows[0].error_message
    # The ladder is 1s then 2s: each gap is at least the rung, plus bounded pickup latency.
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in pairwise(rows)]
    assert 1.0 <= gaps[0] < 3.5, gaps
    assert 2.0 <= gaps[1] < 4.5, gaps
    assert len(calls(log)) == 3


def test_permanent_error_dead_letters_after_one_attempt(app, backend, start_worker, tmp_path):
    start_worker(backend)
    operation_id = create("test.permanent", "perm-1", log=str(tmp_path / "calls.log"))

    operation = wait_state(operation_id, TERMINAL)

    assert operation.state == "dead"
    assert operation.attempts == 1
    assert operation.dead_at is not None
    assert operation.error_kind == "permanent"
    assert operation.error_message == "recipient address is invalid: nobody@invalid"
    assert "Traceback" in operation.error_stack and "PermanentError" in operation.error_stack
    assert [row.outcome for row in attempts_of(operation_id)] == ["dead"]


def test_exhausted_attempts_dead_letter_then_admin_retry_succeeds(app, backend, start_worker, tmp_path):
    start_worker(backend)
    log = tmp_path / "calls.log"
    # Three attempts allowed, three failures: dead. The fourth (after an admin retry) succeeds.
    operation_id = create("test.flaky", "exhaust-1", fail_times=3, log=str(log))

    dead = wait_state(operation_id, TERMINAL)
    assert dead.state == "dead" and dead.attempts == 3
    assert dead.error_kind == "transient"

    operations.retry_dead(operation_id, by="admin@example.com")
    operation = wait_state(operation_id, {"succeeded"})

    assert operation.attempts == 4
    assert operation.dead_at is None
    assert [row.outcome for row in attempts_of(operation_id)] == ["failed", "failed", "dead", "succeeded"]
    assert len(calls(log)) == 4


def test_enqueued_ten_times_runs_once(app, backend, start_worker, tmp_path):
    log = tmp_path / "calls.log"
    operation_id = create("test.succeed", "dup-1", log=str(log))
    for _ in range(9):
        doorbell.ring_now(operation_id)
    start_worker(backend)

    wait_state(operation_id, TERMINAL)
    # Let the other nine deliveries drain: the queue is empty when Huey reports no pending work.
    huey = app.extensions["backstop.huey"]
    wait_for(lambda: huey.pending_count() == 0, message="queue to drain")

    assert calls(log) == [f"{operation_id} 1"]
    assert len(attempts_of(operation_id)) == 1


def test_worker_killed_mid_task_is_recovered(app, backend, start_worker, tmp_path):
    marker = tmp_path / "started"
    log = tmp_path / "calls.log"
    first = start_worker(backend, "first")
    operation_id = create("test.hang_first", "kill-1", marker=str(marker), log=str(log))
    wait_for(marker.exists, message="handler to start")

    first.stop(signal.SIGKILL)
    assert load(operation_id).state == "running"
    start_worker(backend, "second")

    operation = wait_state(operation_id, TERMINAL)

    assert operation.state == "succeeded"
    rows = attempts_of(operation_id)
    assert [row.outcome for row in rows] == ["crashed", "succeeded"]
    # The second consumer saw at start that the first one's process was gone: no wait for the lease.
    assert "is gone" in rows[0].error_message
    assert calls(log) == [f"{operation_id} 1", f"{operation_id} 2"]


def test_queue_down_at_creation_then_reconciler_enqueues(backend, start_worker, tmp_path):
    log = tmp_path / "calls.log"
    # The storefront's process sees a queue on a closed port; the business write must commit anyway.
    unreachable = make_app(backend, HUEY_URL="redis://127.0.0.1:1/0")
    failures_before = doorbell.RingStats.failed
    with unreachable.app_context():
        operation_id = create("test.succeed", "queue-down-1", log=str(log))
        assert doorbell.RingStats.failed == failures_before + 1
        assert load(operation_id).state == "pending"
        db.session.remove()
        db.engine.dispose()

    app = make_app(backend)
    with app.app_context():
        start_worker(backend)
        operation = wait_state(operation_id, TERMINAL)
        assert operation.state == "succeeded"
        assert calls(log) == [f"{operation_id} 1"]
        db.session.remove()
        db.engine.dispose()


def test_two_schedulers_never_reconcile_concurrently(app, backend, start_worker):
    start_worker(backend, "a")
    start_worker(backend, "b")

    runs = wait_for(lambda: _finished_runs() if len(_finished_runs()) >= 6 else None, message="six reconciler runs")

    for earlier, later in pairwise(runs):
        assert earlier.finished_at <= later.started_at, (earlier, later)
    # One run per interval, not one per consumer per interval.
    span = (runs[-1].started_at - runs[0].started_at).total_seconds()
    assert span >= 0.9 * (len(runs) - 1) * 0.9


def _finished_runs() -> list[JobRun]:
    return detached(
        lambda: (
            db.session.execute(
                select(JobRun)
                .where(JobRun.job_name == "reconciler", JobRun.finished_at.is_not(None))
                .order_by(JobRun.started_at)
            )
            .scalars()
            .all()
        )
    )


def test_scheduled_cancelled_and_rescheduled(app, backend, start_worker, tmp_path):
    start_worker(backend)
    now = utcnow()
    on_time = operations.create_operation(
        "test.succeed", {"log": str(tmp_path / "a.log")}, idempotency_key="sched-a", run_at=now + timedelta(seconds=2)
    )
    cancelled = operations.create_operation(
        "test.succeed", {"log": str(tmp_path / "b.log")}, idempotency_key="sched-b", run_at=now + timedelta(seconds=1.5)
    )
    moved = operations.create_operation(
        "test.succeed", {"log": str(tmp_path / "c.log")}, idempotency_key="sched-c", run_at=now + timedelta(seconds=1)
    )
    db.session.commit()
    ids = on_time.id, cancelled.id, moved.id
    assert load(ids[0]).state == "scheduled"
    operations.cancel(ids[1], by="admin")
    new_time = utcnow() + timedelta(seconds=4)
    operations.reschedule(ids[2], new_time)

    first = wait_state(ids[0], TERMINAL)
    assert first.state == "succeeded"
    assert attempts_of(ids[0])[0].started_at >= now + timedelta(seconds=2)

    third = wait_state(ids[2], TERMINAL)
    assert third.state == "succeeded"
    rows = attempts_of(ids[2])
    assert len(rows) == 1 and rows[0].started_at >= new_time
    assert calls(tmp_path / "c.log") == [f"{ids[2]} 1"]

    # Well past its old run time, with the reconciler having swept since: never ran.
    assert load(ids[1]).state == "cancelled"
    assert attempts_of(ids[1]) == []
    assert calls(tmp_path / "b.log") == []
