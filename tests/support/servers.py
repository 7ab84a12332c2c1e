"""Reaching the real PostgreSQL and Redis servers, or skipping (never in CI) when absent."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REQUIRED = os.environ.get("BACKSTOP_REQUIRE_SERVERS") == "1"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip the test with a reason if the server is absent; fail instead when required (CI)."""
    if _listening(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if REQUIRED:
        pytest.fail(message + " (BACKSTOP_REQUIRE_SERVERS=1: CI needs every server)")
    pytest.skip(message)


def create_postgres_database(template_url: str | None = None) -> str:
    """Create a throw-away database on the local server and return its URL: empty, or a copy of
    the database at ``template_url`` (which nobody may be connected to)."""
    import psycopg

    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"backstop_test_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{template_url.rsplit("/", 1)[1]}"' if template_url else ""
    with psycopg.connect(f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    return f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def drop_postgres_database(url: str) -> None:
    """Drop a database made by :func:`create_postgres_database`, closing its sessions."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis_queue(name: str) -> None:
    """Delete the keys Huey made for queue ``name``."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"huey.*{name}*"))
    if keys:
        client.delete(*keys)
