"""The worker benchmark's durable floor: bare Huey plus the two transactions a durable run needs.

``huey_consumer bench.floor_huey.huey`` with the same flags as Backstop's consumer, on the same
queue backend. Each task runs the least a design with a committed claim and a committed outcome
can write, as raw SQL through the bare driver (``sqlite3`` / ``psycopg``), on Backstop's migrated
schema and operations:

1. the claim: the conditional UPDATE of the operation (due, waiting, name not paused) returning
   its attempt number, and the attempt's INSERT; one transaction (on PostgreSQL one statement in
   autocommit, committed without waiting for the WAL flush, as Backstop's claim is);
2. the outcome: the conditional UPDATE to ``succeeded`` and the attempt's UPDATE; one durable
   transaction (on PostgreSQL one statement in autocommit).

On PostgreSQL that is two round trips and one WAL flush per operation: fewer than Backstop can
have, whose outcome shares a transaction with the handler's own writes (BEGIN, the statement,
COMMIT).

No SQLAlchemy, no Flask, no logging. On SQLite the process's threads take turns on the writer
with a lock (as Backstop's writer gate does), so no thread sleeps in SQLite's busy handler.
The gap between this and bare Huey is what the writes cost; the gap between Backstop and this
is Backstop's Python.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

from bench.bare_huey import queue_from_env

huey = queue_from_env("-floor")

_local = threading.local()
_writer = threading.Lock()
_WORKER = f"{socket.gethostname()}:{os.getpid()}"

CLAIM = (
    "UPDATE operations SET state = 'running', attempts = attempts + 1, lease_expires_at = {p}, last_attempt_at = {p},"
    " updated_at = {p} WHERE id = {p} AND (state = 'pending' OR state = 'retrying' OR state = 'scheduled')"
    " AND next_attempt_at <= {p} AND name NOT IN (SELECT name FROM operation_pauses) RETURNING attempts, id"
)
OPEN_ATTEMPT = (
    "INSERT INTO operation_attempts (operation_id, number, started_at, outcome, worker)"
    " VALUES ({p}, {p}, {p}, 'running', {p}) RETURNING id"
)
FINISH = (
    "UPDATE operations SET state = 'succeeded', updated_at = {p}, succeeded_at = {p}, lease_expires_at = NULL,"
    " error_class = NULL, error_kind = NULL, result = NULL WHERE id = {p} AND state = 'running' AND attempts = {p}"
)
CLOSE_ATTEMPT = (
    "UPDATE operation_attempts SET finished_at = {p}, duration_ms = {p}, outcome = 'succeeded',"
    " error_class = NULL, error_message = NULL, error_stack = NULL WHERE id = {p} AND finished_at IS NULL"
)


def _now():
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_connection() -> sqlite3.Connection:
    """A connection with Backstop's pragmas, in manual transaction mode."""
    connection = sqlite3.connect(os.environ["DATABASE_URL"].removeprefix("sqlite:///"), isolation_level=None)
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON", "synchronous=NORMAL"):
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _text(moment: datetime) -> str:
    return moment.isoformat(" ")  # SQLAlchemy's SQLite DateTime format


def _run_on_sqlite(operation_id: int) -> None:
    connection = getattr(_local, "connection", None) or _sqlite_connection()
    _local.connection = connection
    now = _now()
    stamp, lease = _text(now), _text(now + timedelta(seconds=300))
    with _writer:
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute(CLAIM.format(p="?"), (lease, stamp, stamp, operation_id, stamp)).fetchone()
        if row is None:
            connection.execute("ROLLBACK")
            return
        number = row[0]
        attempt = connection.execute(OPEN_ATTEMPT.format(p="?"), (operation_id, number, stamp, _WORKER)).fetchone()[0]
        connection.execute("COMMIT")
    finished = _text(_now())
    with _writer:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(FINISH.format(p="?"), (finished, finished, operation_id, number))
        connection.execute(CLOSE_ATTEMPT.format(p="?"), (finished, 0, attempt))
        connection.execute("COMMIT")


CLAIM_IN_ONE = (
    f"WITH claimed AS ({CLAIM.format(p='%s')}), attempt AS (INSERT INTO operation_attempts"
    " (operation_id, number, started_at, outcome, worker) SELECT id, attempts, %s, 'running', %s FROM claimed"
    " RETURNING id), unflushed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting)"
    " SELECT claimed.attempts, attempt.id FROM claimed, attempt, unflushed"
)
FINISH_IN_ONE = (
    f"WITH finished AS ({FINISH.format(p='%s')} RETURNING id)"
    f" {CLOSE_ATTEMPT.format(p='%s')} AND EXISTS (SELECT 1 FROM finished)"
)


def _run_on_postgres(operation_id: int) -> None:
    """Each transaction one statement in autocommit: one round trip each, the least possible."""
    import psycopg

    connection = getattr(_local, "connection", None)
    if connection is None:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        connection = _local.connection = psycopg.connect(url, autocommit=True)
    now = _now()
    with connection.cursor() as cursor:
        cursor.execute(CLAIM_IN_ONE, (now + timedelta(seconds=300), now, now, operation_id, now, now, _WORKER))
        row = cursor.fetchone()
        if row is None:
            return
        number, attempt = row
        finished = _now()
        cursor.execute(FINISH_IN_ONE, (finished, finished, operation_id, number, finished, 0, attempt))


@huey.task(name="floor_run")
def floor_run(operation_id: int):
    """Claim and finish one operation with the least durable writing."""
    if os.environ["DATABASE_URL"].startswith("sqlite"):
        _run_on_sqlite(operation_id)
    else:
        _run_on_postgres(operation_id)
