"""Fixtures of the fault tests."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import Backend
from tests.support import servers
from tests.support.redis_server import PrivateRedis, require_redis_server


@pytest.fixture
def postgres_backend(tmp_path, templates):
    """PostgreSQL (a copy of the template) + RedisHuey on the shared Redis, under a private queue name."""
    servers.require_server("Redis", servers.REDIS_HOST, servers.REDIS_PORT)
    url = templates.postgres_copy()
    name = f"q{uuid.uuid4().hex[:8]}"
    try:
        yield Backend("postgres", url, f"redis://{servers.REDIS_HOST}:{servers.REDIS_PORT}/0", name, tmp_path)
    finally:
        servers.flush_redis_queue(name)
        templates.give_back_postgres(url)


@pytest.fixture
def private_redis(tmp_path):
    """A private redis-server, stopped afterwards; missing binary: skip (fail in CI)."""
    require_redis_server()
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()
