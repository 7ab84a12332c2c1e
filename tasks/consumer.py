"""Running the Huey consumer with Backstop's settings."""

from __future__ import annotations

from huey import Huey
from huey.consumer import Consumer, Scheduler

# Poll an idle SQLite queue at least twice a second so new work starts within 0.5 s.
IDLE_POLL_MIN_SECONDS = 0.1
IDLE_POLL_MAX_SECONDS = 0.5


def build_consumer(
    huey: Huey, *, workers: int, periodic: bool, tick_seconds: float, shutdown_timeout: float
) -> Consumer:
    """A thread consumer that drains on SIGTERM and ticks periodic jobs every ``tick_seconds``."""
    # Huey checks periodic tasks once a minute; each Backstop job keeps its own interval in
    # the database, so a finer tick only makes the reconciler's interval honest.
    scheduler = type("BackstopScheduler", (Scheduler,), {"periodic_task_seconds": max(tick_seconds, 1.0)})
    consumer_class = type("BackstopConsumer", (Consumer,), {"scheduler_class": scheduler})
    return consumer_class(
        huey,
        workers=workers,
        worker_type="thread",
        periodic=periodic,
        initial_delay=IDLE_POLL_MIN_SECONDS,
        max_delay=IDLE_POLL_MAX_SECONDS,
        backoff=1.15,
        scheduler_interval=1,
        graceful_signal="TERM",
        shutdown_timeout=shutdown_timeout,
    )
