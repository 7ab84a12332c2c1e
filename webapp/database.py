"""Engine set-up: SQLite with WAL, a busy timeout, foreign keys and immediate transactions.

SQLite lets one writer in at a time. Left to itself, a connection that finds the database
busy sleeps in steps of 1, 2, 5, 10 ... 100 ms before it looks again, so a few threads and
processes taking turns spend most of their time asleep while the lock is free. Backstop
queues its writers instead (:class:`GatedConnection`): threads of one process wait on a lock
that wakes the next one at once, and processes take turns on a file lock looked at every
fraction of a millisecond. SQLite's own busy timeout stays as the last line of defence.

SQLite copies the write-ahead log back into the database (a checkpoint, with its disk flushes)
inside the COMMIT that grew the log past 1,000 pages: a writer would hold the turn for those
milliseconds while every other writer waits. Gated connections checkpoint after giving the
turn back instead (a checkpoint needs no write lock), every :data:`CHECKPOINT_EVERY_COMMITS`
commits of the process; SQLite's own stays as a backstop for a log that grows past
:data:`BACKSTOP_AUTOCHECKPOINT_PAGES` anyway.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import InvalidatePoolError, OperationalError
from sqlalchemy.pool import Pool

SQLITE_BUSY_TIMEOUT_MS = 30_000
# How long a writer waits for its turn before giving up, as SQLite would ("database is locked").
WRITER_WAIT_SECONDS = SQLITE_BUSY_TIMEOUT_MS / 1000
# Between looks at another process's file lock: short, so a freed lock is taken within ~1 ms.
FILE_LOCK_POLL_SECONDS = (0.00005, 0.001)
# Commits to one file by one process between two checkpoints made outside the turn (a webhook
# delivery writes ~20 pages, an operation's claim or outcome ~5: 600-2,600 pages per checkpoint, around
# SQLite's own 1,000).
CHECKPOINT_EVERY_COMMITS = 128
# SQLite's own checkpoint, inside the COMMIT, only if the log grows this long anyway (40 MB).
BACKSTOP_AUTOCHECKPOINT_PAGES = 10_000
# A PostgreSQL connection back in the pool for longer than this is pinged before it is handed
# out (a restart or an idle timeout may have closed it). One that answered a moment ago is
# not: under load that ping would be a round trip in every request (SQLAlchemy's
# pool_pre_ping pings every checkout). A connection that died within the second fails its
# request (503, or the attempt retries) and SQLAlchemy then replaces the whole pool.
PING_AFTER_IDLE_SECONDS = 1.0


class WriterGate:
    """The turn to write to one SQLite file: a lock for this process's threads, a file lock between processes."""

    def __init__(self, path: str):
        self.thread_lock = threading.Lock()
        self.lock_path = f"{path}.writer-lock"
        self.commits = 0  # since this process's last checkpoint of the file (counted under the turn)

    def checkpoint_due(self) -> bool:
        """Count a commit (call while holding the turn); True every :data:`CHECKPOINT_EVERY_COMMITS`."""
        self.commits += 1
        if self.commits < CHECKPOINT_EVERY_COMMITS:
            return False
        self.commits = 0
        return True

    def acquire(self, descriptor: int) -> None:
        """Wait for the turn (``descriptor``: the caller's own open lock file); OperationalError after the limit."""
        deadline = time.monotonic() + WRITER_WAIT_SECONDS
        if not self.thread_lock.acquire(timeout=WRITER_WAIT_SECONDS):
            raise _locked("another thread of this process kept the database busy")
        pause, longest = FILE_LOCK_POLL_SECONDS
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.thread_lock.release()
                    raise _locked("another process kept the database busy") from None
                time.sleep(pause)
                pause = min(pause * 2, longest)
            except BaseException:
                self.thread_lock.release()
                raise

    def release(self, descriptor: int) -> None:
        """Let the next writer in."""
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        self.thread_lock.release()


def _locked(why: str) -> OperationalError:
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(f"database is locked ({why})"))


_gates: dict[str, WriterGate] = {}
_gates_lock = threading.Lock()


def _gate_for(path: str) -> WriterGate:
    with _gates_lock:
        gate = _gates.get(path)
        if gate is None:
            gate = _gates[path] = WriterGate(path)
        return gate


class GatedConnection(sqlite3.Connection):
    """A SQLite connection that waits for its turn before BEGIN IMMEDIATE and gives it back after COMMIT or ROLLBACK."""

    gate: WriterGate | None = None
    lock_descriptor: int | None = None
    holds_gate = False
    checkpoint_pending = False  # this connection's last commit made a checkpoint due

    def attach_gate(self, path: str) -> None:
        """Queue this connection's transactions with every other writer of the file at ``path``."""
        self.gate = _gate_for(path)
        self.lock_descriptor = os.open(self.gate.lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def begin_immediate(self) -> None:
        """Checkpoint if one is due, then take the turn, then SQLite's write lock."""
        if self.checkpoint_pending:
            self.checkpoint_pending = False
            self._checkpoint()
        if self.gate is not None:
            self.gate.acquire(self.lock_descriptor)
            self.holds_gate = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._give_back()
            raise

    def commit(self) -> None:
        """Commit, then let the next writer in (only after: the write lock is free by then).

        A checkpoint this commit makes due runs when the connection next begins, before it asks
        for the turn: neither inside the turn nor inside the committing caller's work (whose
        timings, such as a cleanup batch's, would otherwise count a disk flush that holds nothing).
        """
        due = self.holds_gate and self.gate.checkpoint_due()
        try:
            super().commit()
        finally:
            self._give_back()
        if due:
            self.checkpoint_pending = True

    def _checkpoint(self) -> None:
        # PASSIVE: copies what no reader still needs, never waits for a lock or blocks a writer.
        # The commit already succeeded: a checkpoint that fails is left to the next one (or SQLite's).
        try:
            self.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except sqlite3.Error:
            pass

    def rollback(self) -> None:
        """Roll back, then let the next writer in."""
        try:
            super().rollback()
        finally:
            self._give_back()

    def close(self) -> None:
        """Close, giving back the turn if a transaction was left open."""
        try:
            super().close()
        finally:
            self._give_back()
            if self.lock_descriptor is not None:
                os.close(self.lock_descriptor)
                self.lock_descriptor = None

    def _give_back(self) -> None:
        if self.holds_gate:
            self.holds_gate = False
            self.gate.release(self.lock_descriptor)


def configure_engine_options(app: Flask) -> None:
    """Engine options per backend; creates the SQLite file's folder."""
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("connect_args", {}).update(
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False, factory=GatedConnection
        )
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
        # Pinged by _ping_if_idle instead: only after PING_AFTER_IDLE_SECONDS in the pool.
        "pool_pre_ping": options.get("pool_pre_ping", False),
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
    if isinstance(dbapi_connection, GatedConnection):
        cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")
    path = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
    cursor.close()
    # An in-memory database belongs to its one connection: no other writer to queue behind.
    if path and isinstance(dbapi_connection, GatedConnection):
        dbapi_connection.attach_gate(os.path.realpath(path))


@event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(connection) -> None:
    # A deferred transaction that reads and then writes can fail with "database is locked"
    # without waiting; taking the write lock up front makes the busy timeout apply.
    if connection.dialect.name != "sqlite":
        return
    dbapi_connection = connection.connection.dbapi_connection
    if isinstance(dbapi_connection, GatedConnection):
        dbapi_connection.begin_immediate()
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@event.listens_for(Pool, "checkin")
def _note_idle_since(dbapi_connection, connection_record) -> None:
    if dbapi_connection is not None:
        connection_record.info["idle_since"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _ping_if_idle(dbapi_connection, connection_record, connection_proxy) -> None:
    # A new connection (never checked in) was just made, and SQLite has no server to lose.
    idle_since = connection_record.info.get("idle_since")
    if idle_since is None or isinstance(dbapi_connection, sqlite3.Connection):
        return
    if time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    failure = ping(dbapi_connection)
    if failure is not None:
        # A dead idle connection means its siblings likely died too (a restart): the pool replaces
        # every connection made before now, as pool_pre_ping does, and this checkout gets a new one.
        raise InvalidatePoolError(f"connection idle since {idle_since:.0f} failed its ping: {failure}") from failure


def ping(dbapi_connection) -> Exception | None:
    """Send a server connection a ``SELECT 1`` (leaving it as it was found); what it raised, or None."""
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        if not getattr(dbapi_connection, "autocommit", False):
            dbapi_connection.rollback()  # the driver began a transaction for the SELECT
    except Exception as failure:  # any failure means this connection cannot be trusted
        return failure
    return None
