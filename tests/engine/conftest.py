"""Fixtures of the engine tests: a doorbell that remembers rings, and outcome listeners."""

from __future__ import annotations

from datetime import datetime

import pytest

from webapp.services.engine import doorbell, runner


class RecordingDoorbell:
    """Remembers every ring (operation id, due time or None for now) instead of enqueueing."""

    def __init__(self):
        self.rings: list[tuple[int, datetime | None]] = []

    def ring(self, operation_id, eta=None):
        self.rings.append((operation_id, eta))

    def depth(self):
        return {"pending": len(self.rings), "scheduled": 0}


@pytest.fixture
def bell():
    """A recording doorbell in place of the app's; the previous one is restored afterwards."""
    previous = doorbell.get_doorbell()
    recorder = RecordingDoorbell()
    doorbell.set_doorbell(recorder)
    yield recorder
    doorbell.set_doorbell(previous)


@pytest.fixture
def outcomes():
    """Every (operation id, state, attempts, outcome) an outcome listener is told about."""
    seen: list[tuple] = []

    def listener(operation, outcome):
        seen.append((operation.id, operation.state, operation.attempts, outcome))

    runner.on_outcome(listener)
    yield seen
    runner.outcome_listeners.remove(listener)
