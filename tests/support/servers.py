"""Reaching the real PostgreSQL and Redis servers, or skipping (never in CI) when absent."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REQUIRED = os.environ.get("BACKSTOP_REQUIRE_SERVERS") == "1"
# The database the suite connects to for creating, renaming and dropping its own.
MAINTENANCE_DSN = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip the test with a reason if the server is absent; fail instead when required (CI)."""
    require(_listening(host, port), f"{name} is not reachable at {host}:{port}")


def require(present: bool, missing: str) -> None:
    """Nothing if ``present``; else skip the test saying what is ``missing``, or fail when required (CI)."""
    if present:
        return
    if REQUIRED:
        pytest.fail(missing + " (BACKSTOP_REQUIRE_SERVERS=1: CI needs every server and program)")
    pytest.skip(missing)


def create_postgres_database(template_url: str | None = None) -> str:
    """Create a throw-away database on the local server and return its URL: empty, or a copy of
    the database at ``template_url`` (which nobody may be connected to)."""
    import psycopg

    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"backstop_test_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{template_url.rsplit("/", 1)[1]}"' if template_url else ""
    with psycopg.connect(MAINTENANCE_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    return f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def drop_postgres_database(url: str) -> None:
    """Drop a database made by :func:`create_postgres_database`, closing its sessions."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(MAINTENANCE_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Everything a test could change about a database other than its rows, as one text: schemas,
# relations and their owners, grants, options and row security, columns (with their statistics
# targets), indexes, constraints, triggers (and whether they are enabled), policies, functions,
# views, types, sequences' settings, extensions, comments and the database's own settings.
# (Rows are emptied; this must come out as the template's.)
SCHEMA_TEXT = """
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT 'schema ' || nspname || ' ' || nspowner::regrole || ' ' || coalesce(nspacl::text, '') AS line
  FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  UNION ALL SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || a.attstattarget || ' ' || a.attidentity::text || a.attgenerated::text
         || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND a.attnum > 0
    AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' '
         || c.relowner::regrole || ' ' || coalesce(c.relacl::text, '') || ' ' || c.relrowsecurity
         || c.relforcerowsecurity || ' ' || coalesce(c.reloptions::text, '') || ' ' || c.relreplident::text
         || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'trigger ' || tgenabled::text || ' ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'policy ' || polrelid::regclass || ' ' || polname FROM pg_policy
  UNION ALL SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  UNION ALL SELECT 'type ' || t.oid::regtype || ' ' || t.typtype::text FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c', 'r')
  UNION ALL SELECT 'enum ' || enumtypid::regtype || ' ' || enumlabel FROM pg_enum
  UNION ALL SELECT 'statistics ' || stxname FROM pg_statistic_ext
  UNION ALL SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
  UNION ALL SELECT 'sequence ' || sequencename || ' ' || start_value || ' ' || increment_by || ' ' || cycle
  FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL SELECT 'publication ' || pubname FROM pg_publication
  UNION ALL SELECT 'large objects ' || count(*) FROM pg_largeobject_metadata
  UNION ALL SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
  WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) lines
"""
# Planner statistics gathered on the copy (a fresh copy has none): ANALYZE, autovacuum's included.
GATHERED_STATISTICS = """
SELECT count(*) FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid
WHERE c.relnamespace = 'public'::regnamespace
"""


def _driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _public_tables(conn) -> list[str]:
    """The tables of the public schema but ``alembic_version``."""
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [table for (table,) in rows if table != "alembic_version"]


def postgres_schema(url: str) -> str:
    """:data:`SCHEMA_TEXT` of the database at ``url``."""
    import psycopg

    with psycopg.connect(_driver_url(url)) as conn:
        return conn.execute(SCHEMA_TEXT).fetchone()[0]


def tables_with_rows(url: str) -> list[str]:
    """The tables of ``url``'s public schema that hold a row (``alembic_version`` aside)."""
    import psycopg

    with psycopg.connect(_driver_url(url)) as conn:
        return [t for t in _public_tables(conn) if conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()]


def recycle_postgres_database(url: str, schema: str, max_bytes: int) -> str | None:
    """Empty a copy of a template whose tables held no rows, under a new name; its new URL, or None.

    Every session on it is ended and the database renamed, so a process a test left behind
    cannot write into the next test's data: it finds no database by the old name (the rename
    fails if one reconnected in between, and the copy is dropped). Then every table is
    truncated and every sequence restarted, in one statement that waits for any transaction
    still holding a table. A copy whose schema or settings are no longer ``schema``, that holds
    planner statistics (a fresh copy has none), or that has grown past ``max_bytes`` is dropped
    instead, and None returned.
    """
    import psycopg

    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name, new_name = url.rsplit("/", 1)[1], f"backstop_test_{uuid.uuid4().hex[:12]}"
    new_url = f"{url.rsplit('/', 1)[0]}/{new_name}"
    with psycopg.connect(MAINTENANCE_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{new_name}"')
        except psycopg.errors.ObjectInUse:
            drop_postgres_database(url)
            return None
    with psycopg.connect(_driver_url(new_url)) as conn:
        reusable = (
            conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] <= max_bytes
            and conn.execute(GATHERED_STATISTICS).fetchone()[0] == 0
            and conn.execute(SCHEMA_TEXT).fetchone()[0] == schema
        )
        if reusable:
            listed = ", ".join(f'"{table}"' for table in _public_tables(conn))
            conn.execute(f"TRUNCATE {listed} RESTART IDENTITY")
    if not reusable:
        drop_postgres_database(new_url)
        return None
    return new_url


def flush_redis_queue(name: str) -> None:
    """Delete the keys Huey made for queue ``name``."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(match=f"huey.*{name}*"))
    if keys:
        client.delete(*keys)
