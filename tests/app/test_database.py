"""Engine settings per backend: SQLite pragmas; PostgreSQL pool bounds and statement timeout.

Seed 002's audit admits a database client with "no pool, no timeout, no circuit breaker":
a throttled database made every call hang. Here a slow statement is cancelled and an
exhausted pool gives up, each after its configured time, so callers fail fast and retry.
"""

from __future__ import annotations

import time

import flask_migrate
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc, text

from tests.conftest import Backend, make_app
from tests.support import servers
from webapp import create_app, database
from webapp.extensions import db


def test_sqlite_runs_with_wal_busy_timeout_and_foreign_keys(sqlite_backend):
    app = make_app(sqlite_backend)
    with app.app_context():
        pragmas = {
            name: db.session.execute(text(f"PRAGMA {name}")).scalar_one()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
        db.session.rollback()
        assert pragmas == {"journal_mode": "wal", "busy_timeout": 30_000, "foreign_keys": 1}


@pytest.fixture
def postgres_backend(tmp_path):
    """A throw-away PostgreSQL database (the queue is not used here)."""
    url = servers.create_postgres_database()
    try:
        yield Backend("postgres", url, f"sqlite:///{tmp_path / 'huey.sqlite3'}", "unused", tmp_path)
    finally:
        servers.drop_postgres_database(url)


@pytest.mark.postgres
def test_postgres_cancels_a_statement_slower_than_the_timeout(postgres_backend):
    app = make_app(postgres_backend, DATABASE_STATEMENT_TIMEOUT_MS=300)
    with app.app_context():
        assert db.session.execute(text("SHOW statement_timeout")).scalar_one() == "300ms"
        started = time.monotonic()
        with pytest.raises(exc.OperationalError, match="statement timeout"):
            db.session.execute(text("SELECT pg_sleep(5)"))
        db.session.rollback()
        assert time.monotonic() - started < 3
        db.engine.dispose()


@pytest.mark.postgres
def test_postgres_migrations_are_not_cut_by_the_request_statement_timeout(postgres_backend):
    app = create_app(postgres_backend.config(DATABASE_STATEMENT_TIMEOUT_MS=300))
    timeouts_seen_by_ddl = []

    def note_timeout(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("CREATE INDEX"):
            cursor.execute("SHOW statement_timeout")
            timeouts_seen_by_ddl.append(cursor.fetchone()[0])

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", note_timeout)
        flask_migrate.upgrade()
        db.engine.dispose()
    assert timeouts_seen_by_ddl and set(timeouts_seen_by_ddl) == {"0"}


@pytest.mark.postgres
def test_postgres_pool_is_bounded_and_an_exhausted_pool_gives_up(postgres_backend):
    app = make_app(postgres_backend, DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_POOL_TIMEOUT_SECONDS=0.3)
    with app.app_context():
        engine = db.engine
        assert engine.pool.size() == 1
        held = engine.connect()
        try:
            started = time.monotonic()
            with pytest.raises(exc.TimeoutError):
                engine.connect()
            assert time.monotonic() - started < 3
        finally:
            held.close()
        with engine.connect() as connection:  # the returned connection is usable again
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()


def _terminate(backend, pid: int) -> None:
    """End the server process behind a pooled connection, as a PostgreSQL restart would (from
    outside the pool, which would otherwise hand back that very connection)."""
    with psycopg.connect(backend.database_url.replace("postgresql+psycopg://", "postgresql://")) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def _terminate_the_pooled_connection(backend, engine) -> int:
    """Use one connection, give it back to the pool, then end its server process; return its pid."""
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    _terminate(backend, pid)
    return pid


@pytest.mark.postgres
def test_postgres_pings_a_connection_idle_in_the_pool_and_replaces_it_if_it_died(postgres_backend, monkeypatch):
    monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 0.0)  # every pooled connection has idled long enough
    app = make_app(postgres_backend)
    with app.app_context():
        engine = db.engine
        pid = _terminate_the_pooled_connection(postgres_backend, engine)

        with engine.connect() as connection:  # the dead one fails its ping: a new connection answers
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        engine.dispose()


@pytest.mark.postgres
def test_postgres_hands_out_a_connection_used_a_moment_ago_without_a_ping(postgres_backend, monkeypatch):
    monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 3600.0)
    app = make_app(postgres_backend)
    with app.app_context():
        engine = db.engine
        pid = _terminate_the_pooled_connection(postgres_backend, engine)

        # No round trip before handing it out, so the dead connection fails its first statement
        # (a webhook answers 503 and Stripe retries) and the pool is replaced for the next caller.
        with pytest.raises(exc.OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        engine.dispose()
