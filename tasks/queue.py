"""The Huey instance (SqliteHuey or RedisHuey from ``HUEY_URL``) and the doorbell on top of it."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis
from huey import Huey, RedisHuey, SqliteHuey
from huey.storage import RedisStorage

from webapp.services.engine.doorbell import RingStats

log = logging.getLogger("backstop.doorbell")


class QueueConfigurationError(ValueError):
    """``HUEY_URL`` names a backend Backstop does not support."""


class RevocationUnsupported(NotImplementedError):
    """Backstop's queue does not revoke tasks: stop the operation in the database instead."""


# Huey's key for one task's revocation flag is this prefix and the task's id (``Task.revoke_id``).
REVOKE_KEY_PREFIX = "r:"


class WithoutRevocation:
    """Huey without task revocation, mixed in before ``RedisHuey`` / ``SqliteHuey``.

    Backstop stops an operation in the database (a paused name, a cancelled or resolved
    operation), where the claim refuses it; it never revokes the ring. Huey still looks for a
    revocation before every task and deletes the task's flag after it: two queue round trips per
    operation (on SqliteHuey a read and a write transaction) for a feature nobody uses. This
    skips both, and refuses to revoke, so nothing can rely on a revocation that is never read.
    """

    def is_revoked(self, task, timestamp=None, peek=True) -> bool:
        """Never: nothing revokes a task on this queue."""
        return False

    def delete(self, key):
        """Delete ``key`` from Huey's key-value store, except a task's revocation flag (never set)."""
        if isinstance(key, str) and key.startswith(REVOKE_KEY_PREFIX):
            return False
        return super().delete(key)

    def revoke_all(self, *args, **kwargs):
        """Refused: see :class:`RevocationUnsupported`."""
        raise RevocationUnsupported("pause the operation's name or cancel the operation in Backstop instead")

    revoke = revoke_by_id = revoke_all


# Huey's two INFO lines for every task it runs. The engine logs each attempt once (operation,
# name, attempt, outcome, duration); these would only repeat it, with Huey's task id.
HUEY_TASK_LINES = frozenset({"Executing %s", "%s executed in %0.3fs"})


class WithoutHueyTaskLines(logging.Filter):
    """Drops Huey's per-task INFO lines (:data:`HUEY_TASK_LINES`); its warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for one of Huey's per-task INFO lines."""
        return not (record.levelno <= logging.INFO and record.msg in HUEY_TASK_LINES)


def drop_huey_task_lines() -> None:
    """Install :class:`WithoutHueyTaskLines` on Huey's logger (once per process)."""
    logger = logging.getLogger("huey")
    if not any(isinstance(installed, WithoutHueyTaskLines) for installed in logger.filters):
        logger.addFilter(WithoutHueyTaskLines())


class RedisQueue(WithoutRevocation, RedisHuey):
    """Backstop's queue on Redis."""


class SqliteQueue(WithoutRevocation, SqliteHuey):
    """Backstop's queue on a SQLite file."""


def huey_from_url(url: str, name: str, timeout: float = 2.0) -> Huey:
    """``sqlite:////abs/path.db`` → SqliteHuey; ``redis://host:port/db`` → RedisHuey whose
    connect and reads give up after ``timeout`` seconds."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///") :]
        if not path:
            raise QueueConfigurationError("HUEY_URL needs a file path: sqlite:////absolute/path/huey.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # results=False: the database, not Huey, keeps every outcome. fsync=False: a ring lost to
        # a power cut is re-rung by the reconciler, so the queue need not wait for the disk on
        # every enqueue and dequeue (SQLite's default in WAL mode, ~a disk flush per ring).
        return SqliteQueue(name, filename=path, results=False, timeout=30, fsync=False)
    if scheme in ("redis", "rediss", "unix"):
        # Short timeouts: a ring to a stopped or frozen (accepting, never answering) Redis must
        # fail fast instead of holding the request that rang; the reconciler re-rings.
        pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        # The consumer's blocking read must return (empty) before the socket gives up on it.
        return RedisQueue(name, connection_pool=pool, results=False, read_timeout=min(1.0, timeout / 2))
    raise QueueConfigurationError(f"HUEY_URL must start with sqlite:// or redis://, got {scheme or url!r}")


class PipelinedLpush:
    """``LPUSH``es onto a Redis list without waiting for Redis's reply; the thread's next push reads it.

    A ring is only a doorbell: the database holds the operation, and the reconciler re-rings one
    whose ring was lost. So a ring need not hold the request (or task) that rang for Redis's
    reply; the reply waits in the socket until the same thread rings again. A reply that turns
    out to be an error is logged and counted as a failed ring naming the operation it was for.
    A connection found broken (or silent past its timeout) while reading it fails that earlier
    ring and this push too, and is replaced at the next push: a ring still gives up within the
    queue's timeout. A connection Redis has closed (its idle ``timeout``, a restart) is noticed
    before a push is sent into it, and replaced. Each thread has its own connection, made from
    the queue's pool (its timeouts); a forked child makes its own rather than share its parent's
    socket.
    """

    def __init__(self, pool: redis.ConnectionPool, key: str):
        self.pool = pool
        self.key = key
        self._local = threading.local()

    def push(self, data: bytes, label: object) -> None:
        """Send ``LPUSH key data``; ``label`` names this push if its reply, read later, is an error."""
        connection = self.settle() or self._connect()
        self._local.unread = label  # before sending: a reply must never be left without its reader
        try:
            connection.send_command("LPUSH", self.key, data)
        except BaseException:
            self._drop(connection)
            raise

    def settle(self):
        """Read the reply still waiting on this thread's connection; the connection, or None if there is none.

        None also when Redis has closed the connection (it is dropped). Raises what broke the
        connection while the reply was awaited (after logging the earlier ring as not confirmed).
        """
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():
            return None
        label, local.unread = local.unread, None
        if label is not None:
            try:
                connection.read_response()
            except redis.ResponseError as exc:  # Redis refused that push; the connection itself is fine
                self._report(label, exc)
            except BaseException as exc:
                self._report(label, exc)
                self._drop(connection)
                raise
        # Nothing else may wait on the socket: anything there is Redis closing the connection (its
        # idle ``timeout``, a restart), and a push sent into a closed socket would be lost unseen.
        try:
            if not connection.can_read(timeout=0):
                return connection
        except redis.ConnectionError:
            pass
        self._drop(connection)
        return None

    def connection_of_this_thread(self):
        """This thread's connection (None before its first push or after one failed)."""
        local = self._local
        return getattr(local, "connection", None) if getattr(local, "pid", None) == os.getpid() else None

    def _connect(self):
        # Made from the pool's settings but not counted by it: the pool's own commands (the
        # consumer's reads, the queue's depth) must never wait for a slot these hold.
        connection = self.pool.connection_class(**self.pool.connection_kwargs)
        local = self._local
        local.connection, local.pid, local.unread = connection, os.getpid(), None
        # Closed when the thread is gone (a development server's thread per request), not left to the collector.
        local.closer = weakref.finalize(threading.current_thread(), connection.disconnect)
        return connection

    def _drop(self, connection) -> None:
        local = self._local
        local.connection = local.unread = None
        local.closer.detach()
        connection.disconnect()

    @staticmethod
    def _report(label: object, exc: BaseException) -> None:
        RingStats.failed += 1
        log.warning(
            "the ring of operation %s was not confirmed (%s: %s); the reconciler will", label, type(exc).__name__, exc
        )


# Messages read from the head of the queue to find the oldest ring (ticks may come first).
PEEK = 8


class HueyDoorbell:
    """Rings by enqueueing ``run_operation(id)``, at once or at ``eta``."""

    def __init__(self, huey: Huey, run_operation):
        self.huey = huey
        self.run_operation = run_operation
        storage = huey.storage
        # On Redis a ring at once is pushed without waiting for the reply (see PipelinedLpush).
        self.lpush = PipelinedLpush(storage.pool, storage.queue_key) if type(storage) is RedisStorage else None

    def ring(self, operation_id: int, eta: datetime | None = None, stamp: datetime | None = None) -> None:
        """Enqueue a run of ``operation_id`` (the claim makes duplicates harmless), carrying ``stamp``."""
        if eta is None and self.lpush is not None:
            # The message Huey's enqueue would push (Backstop uses no enqueue signal, expiry or result).
            self.lpush.push(self.huey.serialize_task(self.run_operation.s(operation_id, stamp)), operation_id)
        elif eta is None:
            self.run_operation(operation_id, stamp)
        else:
            # Our datetimes are naive UTC, but Huey reads a naive eta as local time (and drops
            # its microseconds, delivering up to a second early): hand it an aware one.
            aware = eta.replace(tzinfo=UTC) if eta.tzinfo is None else eta
            self.run_operation.schedule(args=(operation_id, stamp), eta=aware)

    def depth(self) -> dict:
        """Messages waiting in the queue and in Huey's schedule."""
        return {"pending": self.huey.pending_count(), "scheduled": self.huey.scheduled_count()}

    def oldest_waiting(self) -> datetime | None:
        """The stamp of the ring next in line (None: the queue holds no ring, or one without a stamp).

        Reads at most :data:`PEEK` messages from the head of the queue (periodic ticks share
        it), whatever the queue's length.
        """
        for task in self.huey.pending(limit=PEEK):
            if task.name == self.run_operation.name:
                return task.args[1] if len(task.args) > 1 else None
        return None
