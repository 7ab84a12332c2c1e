"""Fixtures of the engine tests: a recording doorbell and the outcomes listeners see."""

from __future__ import annotations

import uuid

import pytest

from tests.support.engine import RecordingDoorbell, ringing_into
from webapp.extensions import db
from webapp.models import PeriodicJob
from webapp.services.engine import runner


@pytest.fixture
def bell():
    """A recording doorbell in place of the app's; the previous one is restored afterwards."""
    with ringing_into(RecordingDoorbell()) as recorder:
        yield recorder


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
