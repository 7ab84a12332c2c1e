"""On PostgreSQL the claim's COMMIT does not wait for the disk; the outcome's still does.

A lost claim (PostgreSQL crashing before its record is flushed) leaves the operation waiting, as
a crashed attempt would; the outcome, which says the side effect happened, must be on disk.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.engine.scripted import T0
from tests.support.postgres import postgres_app, statements_sent
from tests.support.reads import load
from webapp.extensions import db
from webapp.services.engine import operations, runner
from webapp.services.engine.registry import handler

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@handler("test.commit_setting", kind="job")
def report_commit_setting(ctx):
    """Runs in the outcome's transaction: report how that transaction will commit."""
    return {"synchronous_commit": db.session.execute(text("SHOW synchronous_commit")).scalar()}


@pytest.fixture
def pg_app(tmp_path, templates):
    """App on PostgreSQL + RedisHuey."""
    with postgres_app(tmp_path, templates) as app:
        yield app


def test_the_claim_is_one_unflushed_autocommit_statement_and_the_outcome_commits_with_a_flush(pg_app):
    operation_id = operations.create_operation("test.commit_setting", {}, idempotency_key="commit-setting").id
    db.session.commit()
    with statements_sent(db.engine) as statements:
        result = runner.execute(operation_id, now=T0.replace(year=2100))

    assert result.outcome == "succeeded"
    (autocommit, claim), *outcome = statements
    # One round trip: its own transaction, the attempt inserted from the claimed row, no flush.
    assert autocommit
    assert claim.startswith("WITH claimed AS (UPDATE operations SET state=")
    assert "INSERT INTO operation_attempts" in claim and "set_config(" in claim
    assert not any(autocommit or "set_config(" in sql for autocommit, sql in outcome)
    assert load(operation_id).result == {"synchronous_commit": "on"}
    [attempt] = db.session.execute(
        text("SELECT number, outcome, worker FROM operation_attempts WHERE operation_id = :id"), {"id": operation_id}
    ).all()
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "succeeded", runner.worker_identity())


def test_a_claim_that_takes_nothing_writes_no_attempt(pg_app):
    operation_id = operations.create_operation("test.commit_setting", {}, idempotency_key="commit-setting").id
    db.session.commit()

    result = runner.execute(operation_id, now=T0.replace(year=2000))  # before it is due

    assert result.outcome == "not_claimed" and result.due_at is not None
    assert db.session.execute(text("SELECT count(*) FROM operation_attempts")).scalar() == 0
    assert load(operation_id).state == "pending"


@handler("test.touches_nothing", kind="job")
def touches_nothing(ctx):
    """Writes nothing and reads nothing: its success has nothing to commit with."""
    return {"done": True}


def test_a_success_nothing_else_commits_with_is_one_durable_statement_on_its_own(pg_app, monkeypatch):
    monkeypatch.setattr(runner, "outcome_listeners", [dead_only])  # declared: not told of successes
    operation_id = operations.create_operation("test.touches_nothing", {}, idempotency_key="alone").id
    db.session.commit()

    with statements_sent(db.engine) as statements:
        result = runner.execute(operation_id, now=T0.replace(year=2100))

    assert result.outcome == "succeeded"
    (claim_autocommit, claim), (outcome_autocommit, outcome) = statements  # two round trips in all
    assert claim_autocommit and "set_config(" in claim
    assert outcome_autocommit and outcome.startswith("WITH finished AS (UPDATE operations SET")
    assert "set_config(" not in outcome  # the outcome waits for the disk
    assert load(operation_id).state == "succeeded" and load(operation_id).result == {"done": True}
    [attempt] = db.session.execute(
        text("SELECT outcome, finished_at IS NOT NULL AS closed FROM operation_attempts WHERE operation_id = :id"),
        {"id": operation_id},
    ).all()
    assert (attempt.outcome, attempt.closed) == ("succeeded", True)


def dead_only(operation, outcome):
    raise AssertionError(f"told of {outcome}")


dead_only.outcomes, dead_only.kinds = frozenset({"dead"}), None


def test_a_success_a_listener_wants_commits_with_the_listeners_writes(pg_app, outcomes):
    operation_id = operations.create_operation("test.touches_nothing", {}, idempotency_key="heard").id
    db.session.commit()

    with statements_sent(db.engine) as statements:
        result = runner.execute(operation_id, now=T0.replace(year=2100))

    assert result.outcome == "succeeded" and outcomes[-1] == (operation_id, "succeeded", 1, "succeeded")
    assert [autocommit for autocommit, _ in statements][:2] == [True, False]  # the outcome in a transaction
    assert (
        db.session.execute(
            text("SELECT count(*) FROM periodic_jobs WHERE name LIKE :name"), {"name": f"listener-{operation_id}-%"}
        ).scalar()
        == 1
    )
