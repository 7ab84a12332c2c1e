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


# Everything a test could change about a database other than its rows, as one text: tables and
# their columns, indexes, constraints, triggers, functions, views, sequences' settings,
# extensions and the database's own settings. (Rows are emptied; this must come out the same.)
SCHEMA_TEXT = """
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS line
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND a.attnum > 0
    AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc)
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
  UNION ALL SELECT 'sequence ' || sequencename || ' ' || start_value || ' ' || increment_by || ' ' || cycle
  FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
  WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) lines
"""


def _driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def postgres_schema(url: str) -> str:
    """:data:`SCHEMA_TEXT` of the database at ``url``."""
    import psycopg

    with psycopg.connect(_driver_url(url)) as conn:
        return conn.execute(SCHEMA_TEXT).fetchone()[0]


def tables_with_rows(url: str) -> list[str]:
    """The tables of ``url``'s public schema that hold a row (``alembic_version`` aside)."""
    import psycopg

    with psycopg.connect(_driver_url(url)) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return [t for t in tables if t != "alembic_version" and conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()]


def empty_postgres_database(url: str, schema: str, max_bytes: int) -> bool:
    """Make a copy of a template whose tables held no rows as good as a new copy; False if it cannot be.

    Ends every session on it, deletes every row (but ``alembic_version``'s) and restarts every
    sequence, in one transaction. Refuses (False, nothing deleted) a database whose schema or
    settings are no longer ``schema`` or that has grown past ``max_bytes`` (emptying large tables
    costs more than a new copy, and leaves them bloated): the caller drops it instead.
    """
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    with psycopg.connect(_driver_url(url)) as conn:
        if conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] > max_bytes:
            return False
        if conn.execute(SCHEMA_TEXT).fetchone()[0] != schema:
            return False
        # Foreign keys' triggers off for this transaction: every table is emptied, in any order.
        conn.execute("SET LOCAL session_replication_role = replica")
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
            if table != "alembic_version":
                conn.execute(f'DELETE FROM "{table}"')
        for (sequence,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
            conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
    return True


def flush_redis_queue(name: str) -> None:
    """Delete the keys Huey made for queue ``name``."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"huey.*{name}*"))
    if keys:
        client.delete(*keys)
