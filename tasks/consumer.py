"""Running the Huey consumer with Backstop's settings."""

from __future__ import annotations

from huey import Huey
from huey.consumer import Consumer, Scheduler

# An idle worker looks at a SQLite queue every 10-50 ms (one indexed read of a tiny table), so
# new work starts within ~50 ms; a Redis queue wakes its workers at once (blocking pop).
IDLE_POLL_MIN_SECONDS = 0.01
IDLE_POLL_MAX_SECONDS = 0.05


class BackstopConsumer(Consumer):
    """Huey's consumer, plus this process's heartbeat thread (started with it, stopped after it drains)."""

    heartbeat = None  # a webapp.services.engine.consumers.Heartbeat, or None

    def run(self):
        """Beat while consuming; record a clean stop once the workers have drained."""
        if self.heartbeat is not None:
            self.heartbeat.start()
        try:
            super().run()
        finally:
            if self.heartbeat is not None:
                self.heartbeat.stop()


def build_consumer(
    huey: Huey, *, workers: int, periodic: bool, tick_seconds: float, shutdown_timeout: float, heartbeat=None
) -> Consumer:
    """A thread consumer that drains on SIGTERM and ticks periodic jobs every ``tick_seconds``.

    With ``heartbeat`` (a ``consumers.Heartbeat``), it beats from its own thread while it runs.
    """
    # Huey checks periodic tasks once a minute; each Backstop job keeps its own interval in
    # the database, so a finer tick only makes the reconciler's interval honest.
    scheduler = type("BackstopScheduler", (Scheduler,), {"periodic_task_seconds": max(tick_seconds, 1.0)})
    consumer_class = type(
        "BackstopConsumer", (BackstopConsumer,), {"scheduler_class": scheduler, "heartbeat": heartbeat}
    )
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
