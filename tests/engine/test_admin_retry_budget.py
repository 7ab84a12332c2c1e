"""An admin retry's extra attempts count: the operation's own budget wins over its handler's."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from tests.engine.scripted import POLICY, T0, new_op
from tests.support.reads import load
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine import operations, runner


def exhaust(operation_id: int):
    """Fail every attempt the handler's policy allows; return when the operation is dead."""
    now = T0
    for _ in range(POLICY.max_attempts):
        result = runner.execute(operation_id, now=now, clock=lambda at=now: at)
        now = result.due_at or now
    assert load(operation_id).state == "dead"
    return now + timedelta(hours=1)


def test_a_retry_granting_two_more_attempts_retries_after_the_first_of_them_fails(sqlite_app, bell):
    operation_id = new_op("two-more", *["transient"] * (POLICY.max_attempts + 2))
    now = exhaust(operation_id)

    operations.retry_dead(operation_id, by="admin@example.com", now=now, extra_attempts=2)
    first = runner.execute(operation_id, now=now, clock=lambda: now)

    # Attempt 4 is past the handler's 3, but the admin granted 5: it is retried, not buried.
    assert (first.outcome, first.attempt) == ("retrying", POLICY.max_attempts + 1)
    second = runner.execute(operation_id, now=first.due_at, clock=lambda: first.due_at)
    assert (second.outcome, second.attempt) == ("dead", POLICY.max_attempts + 2)


def test_an_operation_with_a_smaller_budget_than_its_handler_dies_when_it_is_spent(sqlite_app, bell):
    operation_id = new_op("one-only", "transient")
    db.session.execute(update(Operation).where(Operation.id == operation_id).values(max_attempts=1))
    db.session.commit()

    result = runner.execute(operation_id, now=T0, clock=lambda: T0)

    assert (result.outcome, result.attempt) == ("dead", 1)
