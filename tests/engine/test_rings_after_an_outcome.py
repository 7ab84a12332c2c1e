"""After an attempt, the worker is rung again exactly when the operation is due again."""

from __future__ import annotations

from datetime import timedelta

from tests.engine.scripted import T0, new_op
from tests.support.reads import load
from webapp.services.engine import runner

LATER = T0 + timedelta(minutes=5)


def run_once(bell, operation_id: int, now=T0):
    bell.rings.clear()  # forget the ring made when the operation was created
    return runner.execute(operation_id, now=now, clock=lambda: now)


def test_a_retrying_operation_is_rung_for_its_due_time(sqlite_app, bell):
    operation_id = new_op("retry-rings", "transient")

    result = run_once(bell, operation_id)

    due = T0 + timedelta(seconds=2)  # the first backoff step, no jitter
    assert (result.outcome, result.due_at) == ("retrying", due)
    assert load(operation_id).next_attempt_at == due
    assert bell.rings == [(operation_id, due)]


def test_a_deferred_operation_is_rung_for_the_time_it_was_deferred_to(sqlite_app, bell):
    operation_id = new_op("defer-rings", ("defer", LATER))

    result = run_once(bell, operation_id)

    assert (result.outcome, result.due_at) == ("deferred", LATER)
    assert bell.rings == [(operation_id, LATER)]


def test_a_dead_operation_is_not_rung(sqlite_app, bell):
    operation_id = new_op("dead-is-quiet", "permanent")

    result = run_once(bell, operation_id)

    assert (result.outcome, result.due_at) == ("dead", None)
    assert bell.rings == []


def test_a_succeeded_operation_is_not_rung(sqlite_app, bell):
    operation_id = new_op("done-is-quiet")

    assert run_once(bell, operation_id).outcome == "succeeded"
    assert bell.rings == []


def test_an_attempt_put_back_is_rung_to_run_now(sqlite_app, bell):
    operation_id = new_op("put-back-rings")
    runner.claim(operation_id, now=T0)
    bell.rings.clear()

    assert runner.put_back(operation_id, 1, now=T0, reason="worker stopping") is True

    assert bell.rings == [(operation_id, None)]
    assert load(operation_id).next_attempt_at == T0
