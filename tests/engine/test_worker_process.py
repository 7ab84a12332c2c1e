"""Real worker processes: graceful SIGTERM, interrupting SIGINT, and idle pick-up latency."""

from __future__ import annotations

import signal
from statistics import mean

import pytest
from sqlalchemy import select

from tests.support.polling import DEADLINE, wait_for
from tests.support.reads import attempts_of, detached, load
from webapp.extensions import db
from webapp.models import ConsumerBeat, JobRun, Operation
from webapp.services.engine import operations

TERMINAL = {"succeeded", "dead", "cancelled"}


def create(name: str, key: str, **payload) -> int:
    operation = operations.create_operation(name, payload, idempotency_key=key)
    db.session.commit()
    return operation.id


def wait_state(operation_id: int, states, timeout: float = DEADLINE) -> Operation:
    return wait_for(
        lambda: (op := load(operation_id)).state in states and op,
        timeout=timeout,
        message=f"operation {operation_id} to reach {states}",
    )


def blocking_op(tmp_path, key: str):
    """A handler that says when it started and waits for us to release it."""
    paths = {name: tmp_path / f"{key}.{name}" for name in ("marker", "release", "log")}
    operation_id = create("test.block_until_released", key, **{k: str(v) for k, v in paths.items()})
    return operation_id, paths


def calls(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def consumer_rows() -> list[ConsumerBeat]:
    return detached(lambda: db.session.execute(select(ConsumerBeat)).scalars().all())


def test_sigterm_finishes_the_running_attempt_then_exits_cleanly(app, backend, start_worker, tmp_path):
    worker = start_worker(backend, CONSUMER_HEARTBEAT_SECONDS="0.2")
    operation_id, paths = blocking_op(tmp_path, "term")
    wait_for(paths["marker"].exists, message="handler to start")
    # The consumer's heartbeat (its own thread, one upsert a beat) names the operation it runs.
    [beat] = wait_for(
        lambda: (rows := consumer_rows()) and rows[0].running and rows,
        message="the consumer's heartbeat to list its running operation",
    )
    assert (beat.pid, beat.threads, beat.scheduler, beat.stopped_at) == (worker.proc.pid, 2, True, None)
    [running] = beat.running
    assert running["operation_id"] == operation_id and running["worker"].startswith(f"{beat.identity}:")

    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down gracefully" in worker.output(), message="worker to begin draining")
    # Draining: the process waits for the handler instead of abandoning it.
    assert worker.proc.poll() is None
    assert load(operation_id).state == "running"
    paths["release"].write_text("go")

    assert worker.proc.wait(timeout=30) == 0
    operation = load(operation_id)
    assert (operation.state, operation.attempts) == ("succeeded", 1)
    assert [a.outcome for a in attempts_of(operation_id)] == ["succeeded"]
    assert calls(paths["log"]) == [f"{operation_id} 1"]
    [stopped] = consumer_rows()  # a clean stop is recorded: stopped, not lost
    assert stopped.stopped_at is not None and stopped.running == []


def test_sigint_interrupts_and_the_operation_is_put_back_for_the_next_worker(app, backend, start_worker, tmp_path):
    first = start_worker(backend, "first")
    operation_id, paths = blocking_op(tmp_path, "int")
    wait_for(paths["marker"].exists, message="handler to start")

    # With -g TERM, SIGINT is the non-graceful signal: Huey abandons the running task.
    first.proc.send_signal(signal.SIGINT)
    first.proc.wait(timeout=30)

    put_back = load(operation_id)
    assert (put_back.state, put_back.attempts, put_back.lease_expires_at) == ("pending", 0, None)
    [interrupted] = attempts_of(operation_id)
    assert (interrupted.number, interrupted.outcome) == (1, "interrupted")
    assert interrupted.finished_at is not None and interrupted.error_message == "worker interrupted"

    paths["release"].write_text("go")
    start_worker(backend, "second")
    operation = wait_state(operation_id, TERMINAL)

    assert (operation.state, operation.attempts) == ("succeeded", 1)
    assert [(a.number, a.outcome) for a in attempts_of(operation_id)] == [(1, "interrupted"), (1, "succeeded")]
    assert calls(paths["log"]) == [f"{operation_id} 1", f"{operation_id} 1"]


@pytest.mark.alone  # times the pick-up
def test_idle_sqlite_worker_picks_up_new_work_within_half_a_second(sqlite_app, sqlite_backend, start_worker, tmp_path):
    start_worker(sqlite_backend)
    # The worker is up (and idle) once its scheduler has run the reconciler.
    wait_for(
        lambda: detached(lambda: db.session.execute(select(JobRun.id).where(JobRun.finished_at.is_not(None))).first()),
        message="worker to start",
    )

    latencies = []
    for n in range(5):
        operation_id = create("test.succeed", f"latency-{n}", log=str(tmp_path / "calls.log"))
        operation = wait_state(operation_id, TERMINAL)
        [attempt] = attempts_of(operation_id)
        latencies.append((attempt.started_at - operation.created_at).total_seconds())

    assert all(0 <= latency < 1.0 for latency in latencies), latencies
    assert mean(latencies) < 0.5, latencies
