"""An app on a throw-away PostgreSQL database (+ RedisHuey), for tests of PostgreSQL-only behaviour."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Backend, inside, make_app
from tests.support import servers


@contextmanager
def postgres_app(tmp_path: Path):
    """Yield an app on a new PostgreSQL database inside its context; skip (or fail in CI) without servers."""
    servers.require_server("Redis", servers.REDIS_HOST, servers.REDIS_PORT)
    url = servers.create_postgres_database()
    name = f"q{uuid.uuid4().hex[:8]}"
    backend = Backend("postgres", url, f"redis://{servers.REDIS_HOST}:{servers.REDIS_PORT}/0", name, tmp_path)
    try:
        app = make_app(backend)
        with inside(app):
            yield app
    finally:
        servers.flush_redis_queue(name)
        servers.drop_postgres_database(url)
