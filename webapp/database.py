"""Engine set-up: SQLite with WAL, a busy timeout, foreign keys and immediate transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


def configure_engine_options(app: Flask) -> None:
    """Engine options per backend; creates the SQLite file's folder."""
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("connect_args", {}).update(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    else:
        options.update(_server_pool_options(app.config, options))
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def _server_pool_options(config, options: dict) -> dict:
    """A bounded pool, connect and statement timeouts: a slow or throttled database makes
    requests fail fast (503) and operations retry with backoff, instead of piling up."""
    connect_args = dict(options.get("connect_args") or {})
    connect_args.setdefault("connect_timeout", config["DATABASE_CONNECT_TIMEOUT_SECONDS"])
    statement_ms = config["DATABASE_STATEMENT_TIMEOUT_MS"]
    if statement_ms:
        connect_args.setdefault("options", f"-c statement_timeout={statement_ms}")
    return {
        "pool_pre_ping": options.get("pool_pre_ping", True),
        "pool_size": options.get("pool_size", config["DATABASE_POOL_SIZE"]),
        "max_overflow": options.get("max_overflow", config["DATABASE_MAX_OVERFLOW"]),
        "pool_timeout": options.get("pool_timeout", config["DATABASE_POOL_TIMEOUT_SECONDS"]),
        "pool_recycle": options.get("pool_recycle", 1800),
        "connect_args": connect_args,
    }


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    # Let SQLAlchemy, not the driver, begin transactions (see _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(connection) -> None:
    # A deferred transaction that reads and then writes can fail with "database is locked"
    # without waiting; taking the write lock up front makes the busy timeout apply.
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
