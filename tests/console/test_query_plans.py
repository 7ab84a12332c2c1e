"""Every console query stays on an index (EXPLAIN on SQLite and PostgreSQL), so it stays fast at a million rows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import and_, event, func, or_, select

from tests.support import shop
from tests.support.console import make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console import filters as filters_module
from webapp.services.console.failures import dead_letter_stats, encode_cursor, operation_names, page_query
from webapp.services.console.filters import Filters, count_matching, filter_conditions, parse_filters, sort_column
from webapp.services.console.issues import group_failures
from webapp.services.monitoring import backlog, health_page, hourly

# --- the queries stay on indexes (so they stay fast at a million rows) ------------------------


def explain(query) -> list[str]:
    """The plan of ``query`` as run with bound parameters: SQLite's EXPLAIN QUERY PLAN lines, or
    PostgreSQL's EXPLAIN with sequential scans and sorts made prohibitively expensive, so any
    plan that still needs one has no index to use."""
    connection = db.session.connection()
    compiled = query.compile(connection, compile_kwargs={"render_postcompile": True})  # IN lists expanded
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
    plan = explain(query.limit(51))
    if filters.q and filters.dead_only:
        # A text few dead letters match: they are looked up and sorted (at most SEARCH_CANDIDATES
        # of them, plus the operations of at most as many customers); the table is never read.
        text = "\n".join(plan)
        assert "Seq Scan on operations" not in text, text
        assert not any(line.startswith("SCAN operations") for line in plan), text
    else:
        assert_indexed(plan)


def test_a_text_many_dead_letters_match_pages_through_an_index(app, monkeypatch):
    """Past SEARCH_CANDIDATES matches the search tests the dead rows newest first: a keyset walk."""
    monkeypatch.setattr(filters_module, "SEARCH_CANDIDATES", 0)
    make_op()
    filters = Filters(q="timeout")
    later = utcnow()
    query = (
        select(Operation)
        .where(*filter_conditions(filters))
        .where(or_(Operation.dead_at < later, and_(Operation.dead_at == later, Operation.id < 10**9)))
        .order_by(Operation.dead_at.desc(), Operation.id.desc())
    )
    assert_indexed(explain(query.limit(51)))


def test_a_text_most_customers_match_looks_up_each_row_s_purchase(app, monkeypatch):
    """Past SEARCH_CANDIDATES customers (a text every email holds, such as the domain), the newest-first
    walk of dead letters looks up the purchase or customer each row names by primary key: no set of
    the customers' purchases (250,000 at a million operations) is built before a row is tested."""
    monkeypatch.setattr(filters_module, "SEARCH_CANDIDATES", 0)
    grace = shop.add_customer(email="grace@example.com")
    shop.add_purchase(grace, shop.add_product())
    make_op()
    plan_as_at_a_million_rows()
    plan = explain(page_query(Filters(q="example.com")))
    assert_indexed(plan)
    text = "\n".join(plan)
    reads = [line.strip() for line in plan if re.search(r"(SCAN|SEARCH| on) (purchases|customers)\b", line)]
    if db.engine.dialect.name == "sqlite":
        assert "LIST SUBQUERY" not in text, text
        assert reads and all(line.endswith("USING INTEGER PRIMARY KEY (rowid=?)") for line in reads), text
    else:
        assert "hashed SubPlan" not in text and "Materialize" not in text, text
        assert reads and all(line.startswith("->  Index Scan using pk_") for line in reads), text


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


# --- the operations explorer ------------------------------------------------------------------

EXPLORER_COMBINATIONS = [
    {},
    {"state": "succeeded"},
    {"state": "cancelled", "kind": "email"},
    {"name": "email.welcome"},
    {"kind": "alert"},
    {"range": "24h"},
    {"state": "dead", "range": "7d"},
    {"state": "succeeded", "name": "email.welcome"},
    {"state": "retrying", "name": "email.welcome", "kind": "email"},
    {"q": "timeout", "search": "error"},
]
# Searches resolve customers and purchases first, then read operations by subject or key: a
# handful of rows, sorted (a small sort is fine; reading the table is not).
EXPLORER_SEARCHES = [
    {"q": "ada@example.com"},
    {"q": "Lovelace"},
    {"q": "evt_1NQx"},
    {"q": "42"},
    {"q": "purchase:42:confirmation", "search": "key"},
    {"q": "purchase:42", "search": "subject"},
    {"q": "purchase:42"},
]


def _explorer_page_two(combination: dict):
    """Page two of the explorer's list, exactly as list_operations builds it."""
    filters = parse_filters(combination, explorer=True)
    return page_query(filters, cursor=encode_cursor(utcnow(), 10**9))


@pytest.mark.parametrize(
    "combination", EXPLORER_COMBINATIONS, ids=lambda c: "&".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_every_explorer_filter_pages_through_an_index(app, combination):
    make_op()
    assert_indexed(explain(_explorer_page_two(combination)))


def test_every_explorer_search_reads_operations_through_an_index(app):
    make_op()
    customer = shop.add_customer()
    shop.add_purchase(customer, shop.add_product(), stripe_checkout_session_id="cs_test_plan")
    for combination in EXPLORER_SEARCHES:
        plan = explain(_explorer_page_two(combination))
        text = "\n".join(plan)
        assert "Seq Scan on operations" not in text, (combination, text)
        assert not any(line.startswith("SCAN operations") for line in plan), (combination, text)
        db.session.rollback()


def test_backlog_alert_measures_stay_on_indexes(app):
    """The backlog and attempts checks (every minute, at any table size) read indexes, never the table."""
    make_op()
    now = utcnow()
    for state in backlog.WAITING:
        assert_indexed(explain(backlog.due_count_query(state, now, 1001)), grouping=True)
        assert_indexed(explain(backlog.oldest_due_query(state, now)))
    assert_indexed(explain(backlog.all_due_count_query(now, 1001)), grouping=True)
    assert_indexed(explain(backlog.all_oldest_due_query(now)), grouping=True)
    plan = explain(backlog.recent_attempts_query(now))
    assert_indexed(plan, grouping=True)
    text = "\n".join(plan)
    assert "COVERING INDEX ix_operations_kind_succeeded_at_attempts" in text or "Index Only Scan" in text, text


def test_the_health_page_reads_roll_ups_and_indexes_only(app):
    """Every statement the 7-day health page runs, with its roll-ups built, stays on an index."""
    now = utcnow()
    make_op(created_at=now - timedelta(days=2))
    for _ in range(8):  # a day of missing hours per run
        hourly.refresh(now)
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    engine = db.session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        health_page.health_metrics("7d", {}, now)
        health_page.breakdown("7d", now)
        health_page.trend("7d", now)
        assert health_page.as_of("7d", now) == now  # the stored part was used, not the live fallback
    finally:
        event.remove(engine, "before_cursor_execute", record)
    connection = db.session.connection()
    for statement, parameters in statements:
        if connection.dialect.name == "sqlite":
            plan = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = [row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters)]
        text = "\n".join(plan)
        for table in ("operations", "operation_attempts", "operation_hour_rollups"):
            assert f"Seq Scan on {table}" not in text, statement + "\n" + text
            assert not any(line.startswith(f"SCAN {table}") for line in plan), statement + "\n" + text


def test_the_name_filter_lists_names_by_index_seeks(app):
    """The name filter's options: one index seek per distinct name, never a walk of every row."""
    for name in ("b.two", "a.one", "b.two", "c.three"):
        make_op(name=name)
    assert operation_names() == ["a.one", "b.two", "c.three"]
    statements = []
    engine = db.session.get_bind()

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        operation_names()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert_indexed(explain_text(statements[-1]), grouping=True)


def explain_text(statement: str) -> list[str]:
    """The plan of a statement without parameters, as :func:`explain` reads it."""
    connection = db.session.connection()
    if connection.dialect.name == "sqlite":
        return [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement)]
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    return [row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement)]


def test_the_stat_cards_count_dead_letters_by_kind_from_the_dead_only_index(app):
    """By kind over dead rows only: the partial index, never every dead row read from the table."""
    make_op(kind="webhook")
    make_op(kind="email", state="succeeded")
    assert dead_letter_stats()["by_kind"] == {"email": 0, "webhook": 1, "job": 0, "alert": 0}
    statement, parameters = _recorded_statements(db.session.get_bind(), dead_letter_stats)[0]
    connection = db.session.connection()
    if connection.dialect.name == "sqlite":
        plan = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
        assert [line for line in plan if line.startswith("SEARCH")] == [
            "SEARCH operations USING INDEX ix_operations_dead_kind_dead_at (kind=?)"
        ] * 4, plan
    else:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = [row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters)]
        assert "Seq Scan on operations" not in "\n".join(plan), plan


# --- whole pages through the app: every statement they run ------------------------------------

# The console's pages as an admin opens them; the benchmark (bench/admin_at_scale.py) times the
# same set at a million operations.
PAGES = [
    "/admin/failed-operations",
    "/admin/failed-operations?status=all&kind=alert",
    "/admin/partials/stats",
    "/admin/issues",
    "/admin/issues?status=all",
    "/admin/operations-health?window=7d",
    "/admin/partials/health/cards?window=7d",
    "/admin/partials/health/breakdown?window=7d",
    "/admin/partials/health/trend?window=7d",
    "/admin/partials/health/status",
    "/admin/operations?state=succeeded",
    "/admin/operations?state=dead&kind=email",
    "/admin/stripe-events",
    "/admin/customers",
    "/admin/audit",
]
# Tables that grow with traffic; the small ones (pauses, heartbeats, alerts) may be read whole.
LARGE_TABLES = ("operations", "operation_attempts", "operation_hour_rollups", "stripe_events", "audit_log")


# SQLite's statistics (``sqlite_stat1``, from ANALYZE) of the benchmark's million operations:
# with them SQLite plans as it does at that size, where it prefers walking a whole covering index
# to sorting a few rows when it believes a condition matches a third of the table.
MILLION_ROW_STATISTICS = [
    ("audit_log", "ix_audit_log_action_created_at_id", "7565 7565 1 1"),
    ("audit_log", "ix_audit_log_actor_created_at_id", "7565 7565 1 1"),
    ("audit_log", "ix_audit_log_created_at_id", "7565 1 1"),
    ("audit_log", "ix_audit_log_target", "7565 7565 1 1 1"),
    ("customers", "ix_customers_email_lower", "100000 1"),
    ("customers", "ix_customers_name_lower", "100000 1"),
    ("customers", "sqlite_autoindex_customers_1", "100000 1"),
    ("operation_attempts", "ix_operation_attempts_operation_id_number", "1142869 2 1"),
    ("operation_attempts", "ix_operation_attempts_started_at", "1142869 1"),
    ("operations", "ix_operations_created_at_name", "1000000 1 1 1 1 1"),
    ("operations", "ix_operations_dead_fingerprint", "30223 6045 1 1 1 1"),
    ("operations", "ix_operations_dead_kind_dead_at", "30223 7556 1"),
    ("operations", "ix_operations_dead_name_dead_at", "30223 2519 1"),
    ("operations", "ix_operations_kind_created_at", "1000000 250000 1"),
    ("operations", "ix_operations_kind_dead_at_attempts", "30223 7556 1 1"),
    ("operations", "ix_operations_kind_succeeded_at_attempts", "967802 241951 1 1"),
    ("operations", "ix_operations_name_created_at_id", "1000000 83334 1 1"),
    ("operations", "ix_operations_name_state", "1000000 83334 27778"),
    ("operations", "ix_operations_state_created_at_id", "1000000 333334 1 1"),
    ("operations", "ix_operations_state_dead_at_id", "1000000 333334 34 1"),
    ("operations", "ix_operations_state_next_attempt_at", "1000000 333334 1"),
    ("operations", "ix_operations_state_resolved_at_dead_at", "1000000 333334 133 34"),
    ("operations", "ix_operations_subject", "1000000 5"),
    ("operations", "sqlite_autoindex_operations_1", "1000000 1"),
    ("purchases", "ix_purchases_customer_id_created_at", "250000 3 3"),
    ("purchases", "ix_purchases_status_created_at", "250000 250000 250000"),
    ("purchases", "ix_purchases_stripe_checkout_session_id", "250000 1"),
    ("purchases", "ix_purchases_stripe_payment_intent_id", "250000 1"),
    ("purchases", "uq_purchases_request_key", "250000 250000"),
    ("stripe_events", "ix_stripe_events_object_id_type", "350367 2 2"),
    ("stripe_events", "ix_stripe_events_operation_id", "350367 1"),
    ("stripe_events", "ix_stripe_events_processing_state_received_at", "350367 116789 1"),
    ("stripe_events", "ix_stripe_events_received_at", "350367 1"),
    ("stripe_events", "ix_stripe_events_type_received_at", "350367 116789 1"),
    ("stripe_events", "sqlite_autoindex_stripe_events_1", "350367 1"),
]


def plan_as_at_a_million_rows() -> None:
    """On SQLite, make the planner believe the large tables hold what the benchmark's do."""
    if db.engine.dialect.name != "sqlite":
        return
    connection = db.session.connection()
    connection.exec_driver_sql("ANALYZE")
    connection.exec_driver_sql("DELETE FROM sqlite_stat1")
    for row in MILLION_ROW_STATISTICS:
        connection.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", row)
    db.session.commit()
    db.engine.dispose()  # connections load statistics when they first read the schema


def _recorded_statements(engine, call) -> list:
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def _plan(statement: str, parameters) -> list[str]:
    connection = db.session.connection()
    if connection.dialect.name == "sqlite":
        return [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    return [row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters)]


def test_every_console_page_reads_large_tables_through_indexes(app):
    """Each page, status panels and filter options included, reads no large table whole.

    (The status panel's "waiting" counts once walked every entry of the (name, state) index.)
    One set-up for every page: eight roll-up refreshes, an admin and the statistics are the
    slow part, and they are the same for each.
    """
    from tests.support.console import login
    from webapp.services.console import admins

    now = utcnow()
    make_op(created_at=now - timedelta(days=2))
    make_op(state="retrying", name="email.welcome")
    for _ in range(8):  # a day of missing hours per run
        hourly.refresh(now)
    admins.create_admin("admin@example.com", "correct horse battery")
    plan_as_at_a_million_rows()
    client = app.test_client()
    assert login(client).status_code == 302
    db.session.remove()
    problems = []
    for url in PAGES:
        statements = _recorded_statements(db.engine, lambda url=url: client.get(url))
        assert client.get(url).status_code == 200, url
        problems += [f"{url}:\n{problem}" for problem in _whole_reads(statements)]
    assert not problems, "\n\n".join(problems)


def _whole_reads(statements) -> list[str]:
    """Each statement (with its plan) that reads a large table, or walks a whole index of one."""
    found = []
    for statement, parameters in statements:
        plan = _plan(statement, parameters)
        text = "\n".join(plan)
        for table in LARGE_TABLES:
            for line in plan:
                # An index walked in its order and stopped by LIMIT (a keyset page) is fine; a
                # walk of a whole index, or of the table, is not.
                walked = line.startswith(f"SCAN {table} USING") and " LIMIT " in statement
                if f"Seq Scan on {table}" in line or (line.startswith(f"SCAN {table}") and not walked):
                    found.append(statement + "\n" + text)
        db.session.rollback()
    return found
