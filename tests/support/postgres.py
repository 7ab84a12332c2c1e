"""An app on a throw-away PostgreSQL database (+ RedisHuey), for tests of PostgreSQL-only behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import event

from tests.conftest import Templates, inside, make_app, postgres_backend
from webapp.services.engine.sql import autocommit_connections


@contextmanager
def postgres_app(tmp_path: Path, templates: Templates):
    """Yield an app on a PostgreSQL database at head, inside its context; skip (or fail in CI) without servers."""
    with postgres_backend(templates, tmp_path) as backend, inside(make_app(backend)) as app:
        yield app


@contextmanager
def statements_sent(engine) -> Iterator[list[tuple[bool, str]]]:
    """Record ``(autocommit, SQL)`` of every statement the driver sends on ``engine``'s connections.

    Watched at the driver (psycopg's ``cursor_factory``), so statements sent straight to it,
    around SQLAlchemy's execution layer, are seen as well as SQLAlchemy's own.
    """
    sent: list[tuple[bool, str]] = []

    class RecordingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            sent.append((self.connection.autocommit, " ".join(str(query).split())))
            return super().execute(query, params, **kwargs)

    factories = {}  # each watched connection's own cursor factory, put back afterwards

    def watch(dbapi_connection, connection_record, connection_proxy):
        factories.setdefault(dbapi_connection, dbapi_connection.cursor_factory)
        dbapi_connection.cursor_factory = RecordingCursor

    autocommit = autocommit_connections(engine)
    autocommit.discard_idle()  # the next statements take connections it watches
    pools = (engine.pool, autocommit.pool)
    for pool in pools:
        event.listen(pool, "checkout", watch)
    try:
        yield sent
    finally:
        for pool in pools:
            event.remove(pool, "checkout", watch)
        for dbapi_connection, factory in factories.items():
            dbapi_connection.cursor_factory = factory
