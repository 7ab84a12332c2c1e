"""A handler's returned summary is stored on its operation by the success UPDATE, bounded, never failing it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event

from tests.engine.scripted import T0, new_op
from tests.support.reads import load
from webapp.domain.results import MAX_RESULT_BYTES
from webapp.extensions import db
from webapp.services.engine import runner


def _run_counting_statements(operation_id: int) -> tuple[str, int]:
    """Run the operation; return its outcome and how many SQL statements the run executed."""
    statements = []

    def count(*_args):
        statements.append(1)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        outcome = runner.execute(operation_id, now=T0 + timedelta(seconds=1), clock=lambda: T0).outcome
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return outcome, len(statements)


def test_the_success_update_stores_the_result_without_another_statement(app):
    seen = {}

    def listener(operation, outcome):
        seen[operation.id] = operation.result

    runner.on_outcome(listener)
    try:
        plain = new_op("result-none", lambda ctx: None)
        summarised = new_op("result-dict", lambda ctx: {"credits_granted": 5000, "already_completed": False})
        plain_outcome, plain_count = _run_counting_statements(plain)
        outcome, count = _run_counting_statements(summarised)
    finally:
        runner.outcome_listeners.remove(listener)

    assert (plain_outcome, outcome) == ("succeeded", "succeeded")
    assert count == plain_count  # the result rides in the UPDATE that records success
    assert load(plain).result is None
    assert load(summarised).result == {"credits_granted": 5000, "already_completed": False}
    # Outcome listeners (in the same transaction) are shown it too.
    assert seen[summarised] == {"credits_granted": 5000, "already_completed": False}


def test_an_oversized_or_odd_result_is_bounded_and_the_operation_still_succeeds(app):
    huge = new_op("result-huge", lambda ctx: {"body": "x" * 10_000})
    odd = new_op("result-odd", lambda ctx: "done\x00")

    assert runner.execute(huge, now=T0 + timedelta(seconds=1), clock=lambda: T0).outcome == "succeeded"
    assert runner.execute(odd, now=T0 + timedelta(seconds=1), clock=lambda: T0).outcome == "succeeded"

    stored = load(huge).result
    assert stored["truncated"] is True and stored["bytes"] > MAX_RESULT_BYTES
    assert len(stored["preview"]) <= 200
    assert load(odd).result == {"value": "done\ufffd"}  # PostgreSQL's jsonb cannot hold NUL
