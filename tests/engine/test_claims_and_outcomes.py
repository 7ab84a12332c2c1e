"""The claim (one winner, only when due) and every outcome the runner records, in-process with a fixed clock."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta

from sqlalchemy import select, update

from tests.support.engine import (
    LEASE,
    POLICY,
    T0,
    job_row,
    new_op,
    result_of,
    run_in_thread,
)
from tests.support.reads import attempts_of, detached, load
from webapp.domain.fingerprints import fingerprint_of
from webapp.extensions import db
from webapp.models import Operation, PeriodicJob
from webapp.services.engine import operations, runner
from webapp.services.engine.runner import RunResult

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
    written = detached(
        lambda: db.session.execute(select(PeriodicJob.name).where(PeriodicJob.name.like("listener-%"))).scalars().all()
    )
    assert [name.rsplit("-", 1)[0] for name in written] == [f"listener-{operation_id}-succeeded"]


def test_transient_failure_retries_within_policy_and_rolls_back_handler_writes(app, outcomes):
    operation_id = new_op("flaky", ("transient",), write="written-then-rolled-back")

    result = runner.execute(operation_id, now=T0, clock=lambda: T0)

    operation = load(operation_id)
    assert result.outcome == "retrying" and result.due_at == operation.next_attempt_at
    assert (operation.state, operation.attempts, operation.error_kind) == ("retrying", 1, "transient")
    assert T0 <= operation.next_attempt_at <= T0 + POLICY.ceiling(1)
    assert operation.error_class == "tests.support.engine.Boom"
    assert operation.error_message == "boom on attempt 1"
    assert "Traceback" in operation.error_stack and "Boom: boom on attempt 1" in operation.error_stack
    [attempt] = attempts_of(operation_id)
    assert (attempt.outcome, attempt.error_class, attempt.error_message) == (
        "failed",
        "tests.support.engine.Boom",
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
        result = runner.execute(operation_id, now=now, clock=lambda now=now: now)
        assert result.outcome == "retrying"
        operation = load(operation_id)
        assert now <= operation.next_attempt_at <= now + POLICY.ceiling(number)
        now = operation.next_attempt_at

    result = runner.execute(operation_id, now=now, clock=lambda now=now: now)

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
        runner.execute(operation_id, now=now, clock=lambda now=now: now)
        now = load(operation_id).next_attempt_at

    result = runner.execute(operation_id, now=now, clock=lambda now=now: now)

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
