"""The reconciler: expired leases recovered as crashes, due work promoted, lost rings re-rung, in bounded batches."""

from __future__ import annotations

from datetime import timedelta

from tests.support.engine import (
    LEASE,
    POLICY,
    T0,
    new_op,
)
from tests.support.reads import attempts_of, load
from webapp.services.engine import reconciler, runner

# --- the reconciler ------------------------------------------------------------------------


def test_reconciler_recovers_an_expired_lease_as_a_crashed_attempt(app, outcomes):
    operation_id = new_op("crash")
    runner.claim(operation_id, now=T0)
    expiry = T0 + timedelta(seconds=LEASE)

    assert reconciler.reconcile(expiry - timedelta(seconds=1), app.config).recovered == 0
    assert load(operation_id).state == "running"
    report = reconciler.reconcile(expiry + timedelta(seconds=1), app.config)

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
        assert reconciler.reconcile(now, app.config).recovered == 1
        now = max(now, load(operation_id).next_attempt_at or now)

    operation = load(operation_id)
    assert (operation.state, operation.attempts) == ("dead", 3)
    assert [a.outcome for a in attempts_of(operation_id)] == ["crashed", "crashed", "crashed"]


def test_reconciler_promotes_due_scheduled_operations(app, bell):
    operation_id = new_op("promote", run_at=T0 + timedelta(minutes=10))
    bell.rings.clear()

    assert reconciler.reconcile(T0 + timedelta(minutes=9), app.config).promoted == 0
    assert load(operation_id).state == "scheduled" and bell.rings == []
    report = reconciler.reconcile(T0 + timedelta(minutes=10), app.config)

    assert report.promoted == 1
    assert load(operation_id).state == "pending"
    assert bell.ids() == [operation_id]


def test_reconciler_re_rings_overdue_operations_once_per_window(app, bell):
    operation_id = new_op("overdue")
    bell.rings.clear()
    window = 60
    config = {**app.config, "REDELIVER_AFTER_SECONDS": window}

    def rung_at(seconds: float) -> int:
        return reconciler.reconcile(T0 + timedelta(seconds=seconds), config).rung

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

    config = {**app.config, "RECONCILE_BATCH_SIZE": 2}

    reports = [reconciler.reconcile(later, config) for _ in range(4)]

    assert [r.promoted for r in reports] == [2, 1, 0, 0]
    # Promoted operations were just rung; only the five overdue ones are re-rung, two at a time.
    assert [r.rung for r in reports] == [2, 2, 1, 0]
    assert sorted(bell.ids()) == sorted(scheduled + ids)


def test_recovery_works_in_bounded_batches(app):
    for n in range(3):
        runner.claim(new_op(f"lease-{n}"), now=T0)
    later = T0 + timedelta(minutes=5)

    assert [reconciler.recover_expired_leases(later, 2) for _ in range(3)] == [2, 1, 0]
