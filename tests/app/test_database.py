"""Engine settings per backend: SQLite pragmas; PostgreSQL pool bounds and statement timeout.

Seed 002's audit admits a database client with "no pool, no timeout, no circuit breaker":
a throttled database made every call hang. Here a slow statement is cancelled and an
exhausted pool gives up, each after its configured time, so callers fail fast and retry.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import exc, text

from tests.conftest import Backend, make_app
from tests.support import servers
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
