"""Fixtures of the engine tests: a recording doorbell and the outcomes listeners see."""

from __future__ import annotations

import uuid

import pytest

from tests.support.engine import RecordingDoorbell
from webapp.extensions import db
from webapp.models import PeriodicJob
from webapp.services.engine import doorbell, runner


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
    """Every (operation id, state, attempts, outcome) an outcome listener is shown."""
    seen: list[tuple] = []

    def listener(operation, outcome):
        seen.append((operation.id, operation.state, operation.attempts, outcome))
        # Listener writes commit with the outcome they observe.
        db.session.add(PeriodicJob(name=f"listener-{operation.id}-{outcome}-{uuid.uuid4().hex[:8]}"))

    runner.on_outcome(listener)
    yield seen
    runner.outcome_listeners.remove(listener)
