"""Consumers' heartbeats: which consumer processes are alive, and what each is running now.

Each consumer process (``flask --app wsgi worker``) runs a :class:`Heartbeat` thread that writes
one row per beat: a single ``INSERT ... ON CONFLICT DO UPDATE`` keyed by ``host:pid`` (the prefix
of the ``host:pid:thread`` worker identity that attempts and leases record, see
``runner.worker_identity`` and ``reconciler.recover_dead_local_workers``). What it is running
comes from memory: the runner notes each claimed operation under its worker identity and
forgets it when the attempt ends (two dict operations under an uncontended lock per attempt),
so the hot path gains no query and the beat costs one statement however busy the consumer is.

A consumer is *live* while it beats within ``CONSUMER_LOST_AFTER_SECONDS``, *stopped* once it
said goodbye (a clean shutdown), and *lost* otherwise (killed, frozen, its machine gone; the
reconciler recovers what it was running). Cleanup forgets lost and stopped consumers after
``RETENTION_CONSUMERS_HOURS``. ``/healthz`` stays the outside signal; this is for admins.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import ConsumerBeat

log = logging.getLogger("backstop.consumers")

LIST_LIMIT = 200
_TABLE = ConsumerBeat.__table__
_running: dict[str, dict] = {}
_running_lock = threading.Lock()


def process_identity() -> str:
    """``host:pid`` of this process: the prefix of every worker identity it records."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- what this process is running (kept in memory by the runner) -------------------------------


def note_running(worker: str, operation_id: int, name: str, attempt: int, started_at: datetime) -> None:
    """The runner claimed ``operation_id`` on thread identity ``worker``."""
    entry = {"operation_id": operation_id, "name": name, "attempt": attempt, "worker": worker, "started_at": started_at}
    with _running_lock:
        _running[worker] = entry


def note_finished(worker: str) -> None:
    """The attempt running on ``worker`` ended, whatever its outcome."""
    with _running_lock:
        _running.pop(worker, None)


def running_now() -> list[dict]:
    """What this process's workers are running, oldest first (times as ISO strings, for the JSON column)."""
    with _running_lock:
        entries = list(_running.values())
    return [
        {**entry, "started_at": entry["started_at"].isoformat()}
        for entry in sorted(entries, key=lambda entry: entry["started_at"])
    ]


# --- the beat ----------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _upsert(dialect: str):
    """``INSERT ... ON CONFLICT (identity) DO UPDATE`` for ``dialect``, built once."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_TABLE)
    columns = ("host", "pid", "threads", "scheduler", "started_at", "last_seen_at", "stopped_at", "running")
    return insert.on_conflict_do_update(
        index_elements=[_TABLE.c.identity], set_={column: insert.excluded[column] for column in columns}
    )


def beat(
    identity: str, *, threads: int, scheduler: bool | None, started_at: datetime, now: datetime, running: list
) -> None:
    """Write one heartbeat (one statement) and commit."""
    host, _, pid = identity.rpartition(":")
    values = {
        "identity": identity,
        "host": host,
        "pid": int(pid),
        "threads": threads,
        "scheduler": scheduler,
        "started_at": started_at,
        "last_seen_at": now,
        "stopped_at": None,
        "running": running,
    }
    try:
        db.session.connection().execute(_upsert(db.session.get_bind().dialect.name), values)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise


def mark_stopped(identity: str, now: datetime) -> None:
    """A clean shutdown: the consumer is stopped, not lost, and runs nothing. Commits."""
    db.session.execute(
        update(ConsumerBeat)
        .where(ConsumerBeat.identity == identity)
        .values(stopped_at=now, last_seen_at=now, running=[])
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


class Heartbeat:
    """A daemon thread beating every ``interval`` seconds for this consumer process."""

    def __init__(
        self,
        app,
        *,
        threads: int,
        scheduler: bool | None,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.app = app
        self.threads = threads
        self.scheduler = scheduler
        self.interval = interval
        self.clock = clock
        self.identity = process_identity()
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self) -> bool:
        """One beat now; a failure (the database away) is logged, and the next beat tries again."""
        with self.app.app_context():
            try:
                beat(
                    self.identity,
                    threads=self.threads,
                    scheduler=self.scheduler,
                    started_at=self.started_at,
                    now=self.clock(),
                    running=running_now(),
                )
                return True
            except Exception as exc:
                log.warning("consumer heartbeat failed (%s); trying again in %.0f s", type(exc).__name__, self.interval)
                return False
            finally:
                db.session.remove()

    def start(self) -> Heartbeat:
        """Beat once, then every ``interval`` from a daemon thread."""
        self.beat_once()
        self._thread = threading.Thread(target=self._run, name="consumer-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat_once()

    def stop(self) -> None:
        """Stop beating and record a clean stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        with self.app.app_context():
            try:
                mark_stopped(self.identity, self.clock())
            except Exception as exc:  # the row then ages into "lost", which is also true enough
                db.session.rollback()
                log.warning("could not record the consumer's stop (%s)", type(exc).__name__)
            finally:
                db.session.remove()


# --- reading and pruning -----------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    """A consumer as the health page and the admin JSON show it."""

    identity: str
    host: str
    pid: int
    threads: int
    scheduler: bool | None
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    running: list
    status: str  # live, lost, stopped
    seen_seconds_ago: float

    def as_dict(self) -> dict:
        """The JSON form (times as ISO 8601 with Z)."""
        return {
            "identity": self.identity,
            "host": self.host,
            "pid": self.pid,
            "threads": self.threads,
            "scheduler": self.scheduler,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "last_seen_at": _iso(self.last_seen_at),
            "stopped_at": _iso(self.stopped_at),
            "seen_seconds_ago": round(self.seen_seconds_ago, 1),
            "running": [
                {
                    "operation_id": entry.get("operation_id"),
                    "name": entry.get("name"),
                    "attempt": entry.get("attempt"),
                    "worker": entry.get("worker"),
                    "started_at": f"{entry['started_at']}Z" if entry.get("started_at") else None,
                }
                for entry in self.running
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def classify(stopped_at: datetime | None, last_seen_at: datetime, now: datetime, lost_after: float) -> str:
    """live, lost or stopped."""
    if stopped_at is not None:
        return "stopped"
    return "live" if (now - last_seen_at).total_seconds() <= lost_after else "lost"


def list_consumers(now: datetime, config: Mapping) -> list[Consumer]:
    """Every remembered consumer (at most ``LIST_LIMIT``, latest beat first): live ones, then lost, then stopped."""
    rows = db.session.execute(
        select(ConsumerBeat).order_by(ConsumerBeat.last_seen_at.desc()).limit(LIST_LIMIT)
    ).scalars()
    lost_after = config["CONSUMER_LOST_AFTER_SECONDS"]
    consumers = [
        Consumer(
            identity=row.identity,
            host=row.host,
            pid=row.pid,
            threads=row.threads,
            scheduler=row.scheduler,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
            stopped_at=row.stopped_at,
            running=list(row.running or []),
            status=classify(row.stopped_at, row.last_seen_at, now, lost_after),
            seen_seconds_ago=max((now - row.last_seen_at).total_seconds(), 0.0),
        )
        for row in rows
    ]
    db.session.rollback()
    order = {"live": 0, "lost": 1, "stopped": 2}
    return sorted(consumers, key=lambda consumer: order[consumer.status])


def prune_batch(cutoff: datetime, size: int) -> int:
    """One batch of consumers not seen since ``cutoff`` (lost or stopped long ago) forgotten. Commits."""
    identities = (
        db.session.execute(
            select(ConsumerBeat.identity)
            .where(ConsumerBeat.last_seen_at < cutoff)
            .order_by(ConsumerBeat.last_seen_at)
            .limit(size)
        )
        .scalars()
        .all()
    )
    if not identities:
        db.session.rollback()
        return 0
    db.session.execute(
        delete(ConsumerBeat).where(ConsumerBeat.identity.in_(identities)).execution_options(synchronize_session=False)
    )
    db.session.commit()
    return len(identities)


def retention_cutoff(now: datetime, config: Mapping) -> datetime:
    """Consumers last seen before this are forgotten by cleanup."""
    return now - timedelta(hours=config["RETENTION_CONSUMERS_HOURS"])
