"""Fixtures of the fault tests."""

from __future__ import annotations

import pytest

from tests.conftest import postgres_backend as conftest_postgres_backend
from tests.support.redis_server import PrivateRedis, require_redis_server


@pytest.fixture
def postgres_backend(tmp_path, templates):
    """PostgreSQL (a copy of the template) + RedisHuey on the shared Redis, under a private queue name."""
    with conftest_postgres_backend(templates, tmp_path) as backend:
        yield backend


@pytest.fixture
def private_redis(tmp_path):
    """A private redis-server, stopped afterwards; missing binary: skip (fail in CI)."""
    require_redis_server()
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()
