"""The suite's PostgreSQL databases: a copy given back is emptied, renamed and used again only
when it is as good as a new copy of the template; otherwise it is dropped."""

from __future__ import annotations

import psycopg
import pytest

from tests.support import servers

pytestmark = [pytest.mark.postgres]


def driver(url: str) -> psycopg.Connection:
    """An autocommit connection to ``url`` with the bare driver."""
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def oid_of(url: str) -> int | None:
    """The object id of the database of ``url``, or None when no database has that name."""
    with psycopg.connect(servers.MAINTENANCE_DSN) as conn:
        name = url.rsplit("/", 1)[1]
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row and row[0]


def dropped(oid: int) -> bool:
    """Whether the database with object id ``oid`` is gone (under any name)."""
    with psycopg.connect(servers.MAINTENANCE_DSN) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE oid = %s", (oid,)).fetchone() is None


def add_customer(conn: psycopg.Connection, email: str) -> int:
    """Insert a customer; its id."""
    return conn.execute(
        "INSERT INTO customers (email, name, credit_balance_cents, created_at) VALUES (%s, 'x', 0, now()) RETURNING id",
        (email,),
    ).fetchone()[0]


def test_a_copy_given_back_comes_back_empty_with_its_sequences_restarted(templates):
    servers.require_server("PostgreSQL", servers.POSTGRES_HOST, servers.POSTGRES_PORT)
    url = templates.postgres_copy()
    database = oid_of(url)
    with driver(url) as left_open:
        first = add_customer(left_open, "a@example.com")
        add_customer(left_open, "b@example.com")
        templates.give_back_postgres(url)
        with pytest.raises(psycopg.OperationalError):  # giving back ended the session
            left_open.execute("SELECT 1")
    # A process left behind that connects again finds no database by that name to write into.
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        driver(url)
    again = templates.postgres_copy()
    try:
        assert oid_of(again) == database  # the same database, renamed
        with driver(again) as conn:
            assert servers.tables_with_rows(again) == []
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() is not None
            assert add_customer(conn, "c@example.com") == first
    finally:
        templates.give_back_postgres(again)


def test_a_copy_whose_schema_changed_is_dropped(templates):
    servers.require_server("PostgreSQL", servers.POSTGRES_HOST, servers.POSTGRES_PORT)
    url = templates.postgres_copy()
    database = oid_of(url)
    with driver(url) as conn:
        conn.execute("CREATE INDEX test_only ON customers (name)")
    templates.give_back_postgres(url)
    assert dropped(database)
    other = templates.postgres_copy()
    try:
        with driver(other) as conn:
            assert conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'test_only'").fetchone() is None
    finally:
        templates.give_back_postgres(other)


def test_a_copy_with_planner_statistics_is_dropped(templates):
    servers.require_server("PostgreSQL", servers.POSTGRES_HOST, servers.POSTGRES_PORT)
    url = templates.postgres_copy()
    with driver(url) as conn:
        add_customer(conn, "a@example.com")
        conn.execute("ANALYZE customers")  # a fresh copy has none: plans could differ
    database = oid_of(url)
    templates.give_back_postgres(url)
    assert dropped(database)


def test_a_copy_that_grew_large_is_dropped(templates, monkeypatch):
    servers.require_server("PostgreSQL", servers.POSTGRES_HOST, servers.POSTGRES_PORT)
    url = templates.postgres_copy()
    database = oid_of(url)
    monkeypatch.setattr(templates, "REUSE_MAX_BYTES", 1)
    templates.give_back_postgres(url)
    assert dropped(database)
