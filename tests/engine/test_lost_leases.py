"""A worker whose lease was taken over cannot overwrite the new holder's outcome."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete

from tests.engine.scripted import LEASE, T0, Boom, new_op
from tests.support.reads import attempts_of, load
from webapp.config import load as load_settings
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, PeriodicJob
from webapp.services.engine import reconciler, runner

EXPIRED = T0 + timedelta(seconds=LEASE + 1)  # worker A's lease has run out
RETAKEN = EXPIRED + timedelta(seconds=2)  # the retry is due (2 s backoff) and worker B claims it


def take_over(operation_id: int) -> None:
    """Worker A's attempt 1 is recovered as crashed, and worker B claims attempt 2."""
    assert reconciler.reconcile(EXPIRED, load_settings({})).recovered == 1
    assert load(operation_id).next_attempt_at == RETAKEN
    claimed = runner.claim(operation_id, now=RETAKEN)
    assert not isinstance(claimed, runner.RunResult), claimed


def assert_held_by_worker_b(operation_id: int) -> None:
    operation = load(operation_id)
    assert (operation.state, operation.attempts) == ("running", 2)
    assert operation.lease_expires_at == RETAKEN + timedelta(seconds=LEASE)
    assert [(a.number, a.outcome) for a in attempts_of(operation_id)] == [(1, "crashed"), (2, "running")]


def test_a_late_failure_from_the_old_holder_changes_nothing(sqlite_app, bell, outcomes):
    operation_id = new_op("late-failure")
    runner.claim(operation_id, now=T0)
    take_over(operation_id)
    bell.rings.clear()
    outcomes.clear()

    result = runner.record_failure(operation_id, 1, Boom("worker A finally gave up"), now=RETAKEN)

    assert (result.outcome, result.attempt, result.due_at) == ("lost_lease", 1, None)
    assert_held_by_worker_b(operation_id)
    assert bell.rings == [] and outcomes == []
    # Worker B's outcome is still its own to write.
    assert runner.record_failure(operation_id, 2, Boom("B failed"), now=RETAKEN).outcome == "retrying"


def test_a_late_success_from_the_old_holder_is_rolled_back(sqlite_app, bell, outcomes):
    def lose_the_lease_while_running(ctx):
        take_over(ctx.operation.id)

    operation_id = new_op("late-success", lose_the_lease_while_running, write="written-by-worker-a")
    outcomes.clear()

    result = runner.execute(operation_id, now=T0, clock=lambda: RETAKEN)

    assert (result.outcome, result.attempt) == ("lost_lease", 1)
    assert_held_by_worker_b(operation_id)
    assert db.session.get(PeriodicJob, "written-by-worker-a") is None
    assert [outcome for *_, outcome in outcomes] == ["retrying"]  # the reconciler's, not A's success


def test_an_old_holder_that_is_interrupted_does_not_put_the_new_holders_attempt_back(sqlite_app, bell):
    operation_id = new_op("late-interrupt")
    runner.claim(operation_id, now=T0)
    take_over(operation_id)
    bell.rings.clear()

    assert runner.put_back(operation_id, 1, now=RETAKEN, reason="worker A interrupted") is False

    assert_held_by_worker_b(operation_id)
    assert bell.rings == []


def test_an_outcome_for_an_operation_that_no_longer_exists_is_a_lost_lease(sqlite_app, bell, outcomes):
    operation_id = new_op("purged")
    runner.claim(operation_id, now=T0)
    db.session.execute(delete(OperationAttempt).where(OperationAttempt.operation_id == operation_id))
    db.session.execute(delete(Operation).where(Operation.id == operation_id))
    db.session.commit()
    bell.rings.clear()

    result = runner.record_failure(operation_id, 1, Boom("too late"), now=T0)

    assert (result.outcome, result.attempt) == ("lost_lease", 1)
    assert bell.rings == [] and outcomes == []
