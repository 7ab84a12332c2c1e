"""On PostgreSQL the claim's COMMIT does not wait for the disk; the outcome's still does.

A lost claim (PostgreSQL crashing before its record is flushed) leaves the operation waiting, as
a crashed attempt would; the outcome, which says the side effect happened, must be on disk.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event, text

from tests.engine.scripted import T0
from tests.support.postgres import postgres_app
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
def pg_app(tmp_path):
    """App on PostgreSQL + RedisHuey."""
    with postgres_app(tmp_path) as app:
        yield app


def test_the_claim_commits_without_a_flush_and_the_outcome_with_one(pg_app):
    operation_id = operations.create_operation("test.commit_setting", {}, idempotency_key="commit-setting").id
    db.session.commit()
    transactions: list[list[str]] = [[]]

    def statement(conn, cursor, sql, parameters, context, executemany):
        transactions[-1].append(" ".join(sql.split())[:60])

    def commit(conn):
        transactions.append([])

    event.listen(db.engine, "before_cursor_execute", statement)
    event.listen(db.engine, "commit", commit)
    try:
        result = runner.execute(operation_id, now=T0.replace(year=2100))
    finally:
        event.remove(db.engine, "before_cursor_execute", statement)
        event.remove(db.engine, "commit", commit)

    assert result.outcome == "succeeded"
    claim, outcome = transactions[0], transactions[1]
    assert claim[0] == "SET LOCAL synchronous_commit = off"
    assert claim[1].startswith("UPDATE operations SET state=")
    assert not any("synchronous_commit = off" in sql for sql in outcome)
    assert load(operation_id).result == {"synchronous_commit": "on"}
