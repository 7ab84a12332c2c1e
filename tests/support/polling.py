"""Waiting on real processes: poll a condition until a deadline, never a bare sleep."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.reads import load
from webapp.models import Operation

# A deadline only bounds a hang: real processes on a busy two-core machine (parallel test workers,
# each starting Python processes that import the app) can take tens of seconds to start.
DEADLINE = 60.0


class Timeout(AssertionError):
    """A condition did not become true before its deadline."""


def wait_for(condition, *, timeout: float = DEADLINE, interval: float = 0.05, message: str = "condition"):
    """Call ``condition`` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_state(operation_id: int, states, timeout: float = DEADLINE) -> Operation:
    """Poll until the operation is in one of ``states``."""
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(
        lambda: (op := load(operation_id)).state in states and op,
        timeout=timeout,
        message=f"operation {operation_id} to reach {states}",
    )


def calls(log: Path) -> list[str]:
    """Lines the handlers wrote: one per real execution."""
    return log.read_text().splitlines() if log.exists() else []
