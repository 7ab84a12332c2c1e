"""The intake benchmark's baselines as one WSGI app: ``gunicorn bench.bare_app:app``.

``POST /bare`` reads the body and answers 200 (the web stack's limit); ``POST /durable`` also
INSERTs the body into ``bench_intake`` and COMMITs it on a connection kept per process (the
durable-write limit), on ``DATABASE_URL`` with Backstop's SQLite settings (WAL,
``synchronous=NORMAL``, 30 s busy timeout, ``BEGIN IMMEDIATE``), or on PostgreSQL in autocommit
(one round trip). ``POST /floor`` writes what Backstop's intake writes, with the bare driver and
no framework: an ``operations`` row and a ``stripe_events`` row holding the body, in one
transaction (on PostgreSQL one statement in autocommit), into Backstop's own tables with
every index they have (the durable-write limit of that schema). Its rows are named
``bench.floor`` so the benchmark's ledger leaves them out. On SQLite its writers queue on a
blocking file lock (woken the moment it is free) rather than on SQLite's busy handler, which
sleeps in steps of milliseconds, and checkpoint the log after letting go of it (every 128
commits, as Backstop does) rather than inside a COMMIT: the best a writer of that schema can do.
``POST /floor-rung`` is ``/floor`` and then the ring a durable-write-plus-doorbell design cannot
skip: one task enqueued by bare Huey on the queue backend of ``HUEY_URL`` (a queue of its own,
nobody consuming it), carrying an operation number and a stamp as Backstop's ring does.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime

from flask import Flask, jsonify, request

app = Flask(__name__)
_local = threading.local()
URL = os.environ.get("DATABASE_URL", "")
_ring_task = None


def ring_task():
    """``/floor-rung``'s no-op task on a bare Huey queue of its own (made on first use: it needs ``HUEY_URL``)."""
    global _ring_task
    if _ring_task is None:
        from bench.bare_huey import queue_from_env  # here: the module makes a queue from HUEY_URL on import

        rings = queue_from_env("-rung")
        _ring_task = rings.task(name="rung_noop")(_never_run)
    return _ring_task


def _never_run(number: int, stamp: datetime) -> None:
    """Never run (nobody consumes the queue): the ring is what is measured."""


def connection():
    """This process's connection (made on first use, after gunicorn forked)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        if URL.startswith("sqlite:///"):
            conn = sqlite3.connect(URL.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        else:
            import psycopg

            # Autocommit: each INSERT is its own transaction, one round trip (no BEGIN, no COMMIT).
            conn = psycopg.connect(URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        _local.conn = conn
    return conn


def insert(body: bytes) -> None:
    """One INSERT and its COMMIT."""
    conn = connection()
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO bench_intake (received_at, body) VALUES (?, ?)", (time.time(), body.decode()))
        conn.execute("COMMIT")
    else:
        conn.execute("INSERT INTO bench_intake (received_at, body) VALUES (%s, %s)", (time.time(), body.decode()))


FLOOR_TYPE = "bench.floor"  # the type of /floor's events and the name of their operations
_numbers = itertools.count()
_commits = itertools.count()
_OPERATION = (
    "INSERT INTO operations (kind, name, payload, idempotency_key, subject, state, attempts, max_attempts,"
    " next_attempt_at, enqueued_at, created_at, updated_at)"
    " VALUES ('job', {p}, {json}, {p}, NULL, 'pending', 0, 5, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING RETURNING id"
)
_EVENT = (
    "INSERT INTO stripe_events (id, type, livemode, api_version, object_id, payload, received_at,"
    " processing_state, operation_id, processed_at) VALUES ({p}, {p}, {false}, '2024-06-20', {p}, {p}, {p},"
    " 'received', {p}, NULL)"
)
SQLITE_FLOOR = (_OPERATION.format(p="?", json="?"), _EVENT.format(p="?", false="0"))
# PostgreSQL: both INSERTs in one statement, its own transaction (one round trip).
POSTGRES_FLOOR = (
    f"WITH operation AS ({_OPERATION.format(p='%s', json='%s::jsonb')}) "
    + _EVENT.split(" VALUES ")[0]
    + " SELECT %s, %s, false, '2024-06-20', %s, %s, %s, 'received', id, NULL FROM operation"
)


def floor_sqlite() -> tuple[sqlite3.Connection, int]:
    """/floor's own SQLite connection (it checkpoints by itself) and the lock file its writers queue on."""
    found = getattr(_local, "floor", None)
    if found is None:
        path = URL.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # insert_floor checkpoints outside the lock
        found = _local.floor = conn, os.open(path + ".floor-lock", os.O_RDWR | os.O_CREAT)
    return found


def insert_floor(body: bytes) -> None:
    """The intake's two rows (operation, then the event pointing at it) and their COMMIT."""
    conn = floor_sqlite()[0] if URL.startswith("sqlite:///") else connection()
    key = f"{os.getpid()}-{next(_numbers)}-{time.time_ns()}"
    now = datetime.now(UTC).replace(tzinfo=None)
    payload = json.dumps({"event_id": f"evt_floor{key}", "type": FLOOR_TYPE, "object_id": "cs_floor"})
    if isinstance(conn, sqlite3.Connection):
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's text form of a SQLite DATETIME
        operation, event = SQLITE_FLOOR
        lock = floor_sqlite()[1]
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            operation_id = conn.execute(operation, (FLOOR_TYPE, payload, f"floor:{key}", stamp, stamp, stamp, stamp))
            operation_id = operation_id.fetchone()[0]
            conn.execute(event, (f"evt_floor{key}", FLOOR_TYPE, "cs_floor", body.decode(), stamp, operation_id))
            conn.execute("COMMIT")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        if next(_commits) % 128 == 127:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    else:
        conn.execute(
            POSTGRES_FLOOR,
            (FLOOR_TYPE, payload, f"floor:{key}", now, now, now, now)
            + (f"evt_floor{key}", FLOOR_TYPE, "cs_floor", body.decode(), now),
        )


@app.post("/bare")
def bare():
    """Read the body, answer."""
    request.get_data()
    return jsonify({"received": True})


@app.post("/durable")
def durable():
    """Read the body, store it durably, answer."""
    insert(request.get_data())
    return jsonify({"received": True})


@app.post("/floor")
def floor():
    """Read the body, store it as Backstop's intake would with the bare driver, answer."""
    insert_floor(request.get_data())
    return jsonify({"received": True})


@app.post("/floor-rung")
def floor_rung():
    """``/floor``, then one ring enqueued by bare Huey."""
    insert_floor(request.get_data())
    ring_task()(next(_numbers), datetime.now(UTC).replace(tzinfo=None))
    return jsonify({"received": True})
