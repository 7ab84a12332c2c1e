"""The Huey instance (SqliteHuey or RedisHuey from ``HUEY_URL``) and the doorbell on top of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis
from huey import Huey, RedisHuey, SqliteHuey


class QueueConfigurationError(ValueError):
    """``HUEY_URL`` names a backend Backstop does not support."""


def huey_from_url(url: str, name: str) -> Huey:
    """``sqlite:////abs/path.db`` → SqliteHuey; ``redis://host:port/db`` → RedisHuey."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///") :]
        if not path:
            raise QueueConfigurationError("HUEY_URL needs a file path: sqlite:////absolute/path/huey.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # results=False: the database, not Huey, keeps every outcome.
        return SqliteHuey(name, filename=path, results=False, timeout=30)
    if scheme in ("redis", "rediss", "unix"):
        # Short connect timeout: a ring to a dead Redis must fail fast (the reconciler re-rings).
        pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        return RedisHuey(name, connection_pool=pool, results=False)
    raise QueueConfigurationError(f"HUEY_URL must start with sqlite:// or redis://, got {scheme or url!r}")


class HueyDoorbell:
    """Rings by enqueueing ``run_operation(id)``, at once or at ``eta``."""

    def __init__(self, huey: Huey, run_operation):
        self.huey = huey
        self.run_operation = run_operation

    def ring(self, operation_id: int, eta: datetime | None = None) -> None:
        """Enqueue a run of ``operation_id`` (the claim makes duplicates harmless)."""
        if eta is None:
            self.run_operation(operation_id)
        else:
            # Our datetimes are naive UTC, but Huey reads a naive eta as local time (and drops
            # its microseconds, delivering up to a second early): hand it an aware one.
            aware = eta.replace(tzinfo=UTC) if eta.tzinfo is None else eta
            self.run_operation.schedule(args=(operation_id,), eta=aware)

    def depth(self) -> dict:
        """Messages waiting in the queue and in Huey's schedule."""
        return {"pending": self.huey.pending_count(), "scheduled": self.huey.scheduled_count()}
