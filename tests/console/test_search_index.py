"""The dead-letter and customer search indexes (migration 0017) answer exactly what a LIKE over every row answers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import delete, insert, select, text, update

from tests.support import shop
from tests.support.console import make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer, Operation, Purchase
from webapp.services.console import filters as filters_module
from webapp.services.console import search_index
from webapp.services.console.failures import list_operations, page_query
from webapp.services.console.filters import Filters, _customer_subjects, count_matching


def _operations_and_customers() -> None:
    """Dead letters and live operations whose text matches, changed after they were written."""
    grace = shop.add_customer(email="Grace.Hopper@Example.com", name="Grace Hopper")
    alan = shop.add_customer(email="alan@bletchley.org", name="Alan Turing")
    product = shop.add_product()
    paid = shop.add_purchase(grace, product)
    shop.add_purchase(alan, product)
    big = shop.add_purchase(grace, product, id=10**18 + 7)  # 19 digits, as a BIGINT id may have
    make_op(error="SMTP 421 busy", subject="purchase:77", idempotency_key="welcome:grace")
    make_op(error="100% of quota used_up", payload={"to": "Someone@Else.org"})
    make_op(error="path C:\\mail\\spool full")
    make_op(kind="webhook", payload={"purchase_id": paid.id}, subject="evt_1", error="boom")
    make_op(kind="webhook", payload={"event_id": "evt_2"}, subject=f"purchase:{paid.id}", error="boom")
    make_op(payload={"to": "x@y.z"}, subject=f"customer:{grace.id}", error="boom")
    make_op(payload={"purchase_id": "not-a-number"}, error="junk payload")
    # Ids are compared as text: a JSON string names the purchase; other spellings name nothing.
    make_op(kind="webhook", payload={"purchase_id": str(paid.id)}, subject="evt_3", error="boom")
    make_op(kind="webhook", payload={"purchase_id": f"0{paid.id}"}, subject="evt_4", error="boom")
    make_op(kind="webhook", payload={"event_id": "evt_5"}, subject=f"purchase:0{paid.id}", error="boom")
    make_op(kind="webhook", payload={"event_id": "evt_6"}, subject=f"PURCHASE:{paid.id}", error="boom")
    make_op(kind="webhook", payload={"event_id": "evt_7"}, subject="purchase:99999999999999999999", error="boom")
    make_op(kind="webhook", payload={"purchase_id": "9" * 19}, subject="customer:" + "9" * 19, error="boom")
    make_op(payload={"to": "x@y.z"}, subject=f"customer:{grace.id} ", error="boom")
    make_op(kind="webhook", payload={"event_id": "evt_8"}, subject=f"purchase:{big.id}", error="boom")
    make_op(kind="webhook", payload={"purchase_id": big.id}, subject="evt_9", error="boom")
    make_op(state="retrying", error=None, subject="smtp retry pending")  # live: never a dead letter
    resolved = make_op(error="SMTP relay denied")
    resolved.resolved_at = resolved.dead_at
    retried = make_op(error="SMTP will be retried")  # dead, then retried: leaves the index
    reworded = make_op(error="old words")  # dead, then its error rewritten
    removed = make_op(error="SMTP deleted by retention")
    dies_later = make_op(state="running", error=None, subject="dies-later SMTP")
    db.session.commit()
    db.session.execute(update(Operation).where(Operation.id == retried.id).values(state="retrying", dead_at=None))
    db.session.execute(update(Operation).where(Operation.id == reworded.id).values(error_message="new SMTP words"))
    db.session.execute(delete(Operation).where(Operation.id == removed.id))
    db.session.execute(
        update(Operation)
        .where(Operation.id == dies_later.id)
        .values(state="dead", dead_at=resolved.dead_at, error_message="died")
    )
    db.session.execute(update(Customer).where(Customer.id == alan.id).values(email="alan.turing@bletchley.org"))
    db.session.commit()


def _expected(q: str, status: str) -> set[int]:
    """What the search means, evaluated in Python over every operation row."""
    needle = q.lower()
    customers = [c for c in db.session.execute(select(Customer)).scalars() if needle in c.email.lower()]
    purchases = {
        p.id for p in db.session.execute(select(Purchase)).scalars() if p.customer_id in {c.id for c in customers}
    }
    subjects = {f"purchase:{p}" for p in purchases} | {f"customer:{c.id}" for c in customers}
    found = set()
    for op in db.session.execute(select(Operation)).scalars():
        if (
            op.state != "dead"
            or (status == "unresolved" and op.resolved_at)
            or (status == "resolved" and not op.resolved_at)
        ):
            continue
        payload = op.payload or {}
        texts = [op.subject, op.idempotency_key, op.error_message, payload.get("to")]
        if (
            any(needle in str(t).lower() for t in texts if t is not None)
            or op.subject in subjects
            or str(payload.get("purchase_id")) in {str(p) for p in purchases}
        ):
            found.add(op.id)
    db.session.rollback()
    return found


QUERIES = [
    "smtp",
    "SMTP 4",
    "grace.hopper",
    "example.com",
    "%",
    "100%",
    "used_up",
    "_",
    "c:\\mail",
    "bletchley",
    "zz",
    "X@Y",
]


@pytest.mark.parametrize("candidates", [1000, 0], ids=["looked-up", "walked"])
@pytest.mark.parametrize("status", ["unresolved", "resolved", "all"])
def test_the_indexed_search_finds_what_a_scan_of_every_row_finds(app, status, candidates, monkeypatch):
    """Both forms of the search: candidates looked up in the indexes, or (too many) each row tested."""
    monkeypatch.setattr(filters_module, "SEARCH_CANDIDATES", candidates)
    _operations_and_customers()
    for q in QUERIES:
        filters = Filters(status=status, q=q)
        listed = {op.id for op in list_operations(filters, limit=500).rows}
        assert listed == _expected(q, status), q
        assert count_matching(filters) == len(listed), q
        # The live statuses' form (every row tested, no index) agrees on the dead rows too.
        assert count_matching(replace(filters, status="all")) >= len(listed)


def test_sqlite_triggers_keep_the_search_tables_in_step(sqlite_app):
    _operations_and_customers()
    indexed = set(db.session.execute(text(f"SELECT rowid FROM {search_index.SQLITE_TABLE}")).scalars())
    dead = set(db.session.execute(select(Operation.id).where(Operation.state == "dead")).scalars())
    assert indexed == dead
    rows = db.session.execute(text(f"SELECT rowid, email, name FROM {search_index.SQLITE_CUSTOMER_TABLE}")).all()
    customers = db.session.execute(select(Customer.id, Customer.email, Customer.name)).all()
    assert sorted(rows) == sorted((c.id, c.email.lower(), c.name.lower()) for c in customers)
    db.session.execute(delete(Purchase))
    db.session.execute(delete(Customer))
    db.session.commit()
    assert db.session.execute(text(f"SELECT count(*) FROM {search_index.SQLITE_CUSTOMER_TABLE}")).scalar() == 0


@pytest.mark.parametrize("candidates", [1000, 0], ids=["looked-up", "walked"])
def test_the_explorer_finds_customers_by_any_part_of_their_name_or_email(app, candidates, monkeypatch):
    monkeypatch.setattr(filters_module, "SEARCH_CANDIDATES", candidates)
    _operations_and_customers()
    by_name = _customer_subjects("RACE HOP")
    assert by_name and all("grace" in s.lower() or s.startswith(("customer:", "purchase:", "stripe:")) for s in by_name)
    assert any(s.startswith("email:alan.turing@") for s in _customer_subjects("turing@bletch"))
    assert _customer_subjects("nobody-at-all") == []


def test_the_search_reads_the_indexes(app):
    """The text arm goes through the trigram index (GIN on PostgreSQL, FTS5 on SQLite)."""
    make_op(error="SMTP timeout")
    shop.add_customer()
    # Enough other rows that PostgreSQL's statistics favour the trigram index over reading them.
    rows = [
        {**_row(n), "state": "dead", "error_message": f"provider error {n}", "idempotency_key": f"bulk-{n}"}
        for n in range(3000)
    ]
    db.session.execute(insert(Operation), rows)
    db.session.execute(insert(Customer), [{"email": f"c{n}@example.net", "name": f"Customer {n}"} for n in range(3000)])
    db.session.commit()
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        # What autovacuum does after a bulk insert: GIN's pending list merged into the index.
        for name in (search_index.POSTGRES_INDEX, *search_index.POSTGRES_CUSTOMER_INDEXES.values()):
            connection.exec_driver_sql(f"SELECT gin_clean_pending_list('{name}'::regclass)")
    connection.exec_driver_sql("ANALYZE")
    arm = search_index.dead_ids_matching("%smtp timeout%", Operation.state == text("'dead'"))
    customers = search_index.customer_ids_matching("%ada%", names=True)
    plans = []
    for query in (arm, customers):
        compiled = query.compile(connection)
        params = compiled.construct_params()
        if connection.dialect.name == "sqlite":
            values = tuple(params[name] for name in compiled.positiontup)
            plans.append(
                "\n".join(r[-1] for r in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, values))
            )
        else:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plans.append("\n".join(r[0] for r in connection.exec_driver_sql("EXPLAIN " + compiled.string, params)))
    if connection.dialect.name == "sqlite":
        assert "dead_letter_search VIRTUAL TABLE INDEX 0:L" in plans[0], plans[0]
        assert plans[1].count("customer_search VIRTUAL TABLE INDEX 0:L") == 2, plans[1]
    else:
        assert search_index.POSTGRES_INDEX in plans[0], plans[0]
        assert all(name in plans[1] for name in search_index.POSTGRES_CUSTOMER_INDEXES.values()), plans[1]


def _row(n: int) -> dict:
    """A plain operation row for a bulk insert."""
    now = utcnow()
    return dict(
        kind="email",
        name="email.welcome",
        payload={"to": f"bulk{n}@example.org"},
        subject=f"bulk-{n}",
        attempts=4,
        max_attempts=4,
        next_attempt_at=now,
        dead_at=now,
        created_at=now,
        updated_at=now,
    )


@pytest.mark.parametrize("statistics", ["none", "a million rows"])
def test_few_candidates_are_looked_up_not_walked(sqlite_app, statistics):
    """SQLite, with or without ANALYZE, reaches operations only by id, subject or purchase id:
    never by walking every dead row's entry of a state index in date order."""
    from tests.console.test_query_plans import plan_as_at_a_million_rows

    _operations_and_customers()
    if statistics != "none":
        plan_as_at_a_million_rows()
    query = page_query(Filters(q="grace.hopper"))
    connection = db.session.connection()
    compiled = query.compile(connection, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    values = tuple(str(params[n]) if hasattr(params[n], "isoformat") else params[n] for n in compiled.positiontup)
    plan = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, values)]
    reads = [line for line in plan if line.startswith(("SEARCH operations", "SCAN operations"))]
    allowed = ("INTEGER PRIMARY KEY", "ix_operations_subject ", search_index.PURCHASE_ID_INDEX + " ")
    assert reads and all(any(name in line for name in allowed) for line in reads), "\n".join(plan)
