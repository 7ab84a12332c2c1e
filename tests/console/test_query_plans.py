"""Every console query stays on an index (EXPLAIN on SQLite and PostgreSQL), so it stays fast at a million rows."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import and_, func, or_, select

from tests.support.console import make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.filters import Filters, count_matching, filter_conditions, parse_filters, sort_column
from webapp.services.console.issues import group_failures

# --- the queries stay on indexes (so they stay fast at a million rows) ------------------------


def explain(query) -> list[str]:
    """The plan of ``query`` as run with bound parameters: SQLite's EXPLAIN QUERY PLAN lines, or
    PostgreSQL's EXPLAIN with sequential scans and sorts made prohibitively expensive, so any
    plan that still needs one has no index to use."""
    connection = db.session.connection()
    compiled = query.compile(connection)
    params = compiled.construct_params()
    if connection.dialect.name == "sqlite":
        values = tuple(
            str(params[name]) if isinstance(params[name], datetime) else params[name] for name in compiled.positiontup
        )
        return [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, values)]
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    connection.exec_driver_sql("SET LOCAL enable_sort = off")
    return [row[0] for row in connection.exec_driver_sql("EXPLAIN " + compiled.string, params)]


def assert_indexed(plan: list[str], *, grouping: bool = False) -> None:
    """No full scan of ``operations`` and no sort of its rows for ORDER BY."""
    text = "\n".join(plan)
    assert "Seq Scan on operations" not in text, text
    assert not any(line.startswith("SCAN operations") for line in plan), text
    assert "TEMP B-TREE FOR ORDER BY" not in text, text
    if not grouping:
        # PostgreSQL: an incremental sort (on top of an index's order, for the id tie-break) is fine.
        assert not any(line.strip().startswith("->  Sort") or line.startswith("Sort") for line in plan), text


FILTER_COMBINATIONS = [
    {},
    {"kind": "alert"},
    {"name": "email.welcome"},
    {"kind": "email", "name": "email.welcome"},
    {"status": "all"},
    {"status": "resolved"},
    {"status": "all", "kind": "webhook"},
    {"range": "24h"},
    {"status": "all", "name": "x", "range": "7d"},
    {"fingerprint": "0123456789abcdef"},
    {"status": "retrying"},
    {"status": "scheduled"},
    {"q": "timeout"},
]


@pytest.mark.parametrize(
    "combination", FILTER_COMBINATIONS, ids=lambda c: "&".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_every_filter_pages_through_an_index(app, combination):
    make_op()
    filters = parse_filters(combination)
    column = sort_column(filters)
    later = utcnow()
    query = select(Operation).where(*filter_conditions(filters))
    if filters.dead_only:  # page 2 of a keyset walk, exactly as list_operations builds it
        query = query.where(or_(column < later, and_(column == later, Operation.id < 10**9)))
        query = query.order_by(column.desc(), Operation.id.desc())
    else:
        query = query.where(or_(column > later, and_(column == later, Operation.id > 0)))
        query = query.order_by(column.asc(), Operation.id.asc())
    assert_indexed(explain(query.limit(51)))


@pytest.mark.parametrize("status", ["unresolved", "all"])
def test_issues_group_without_scanning_the_table(app, status):
    make_op()
    filters = Filters(status=status)
    fingerprint = func.coalesce(Operation.error_fingerprint, "none")
    query = (
        select(fingerprint, Operation.name, func.count(), func.min(Operation.dead_at))
        .where(*filter_conditions(filters))
        .group_by(fingerprint, Operation.name)
    )
    assert_indexed(explain(query), grouping=True)
    # And the function builds that same shape: its result agrees with a plain count.
    assert group_failures(filters).total_failures == count_matching(filters)
