"""Outcome listeners hear only the outcomes and operation kinds they declared."""

from __future__ import annotations

import pytest

from tests.engine.scripted import T0, new_op
from webapp.services.engine import runner


@pytest.fixture
def heard(monkeypatch):
    """Three listeners (any outcome; dead only; email only) and what each was told."""
    told: dict[str, list[str]] = {"any": [], "dead": [], "email": []}
    monkeypatch.setattr(runner, "outcome_listeners", [])
    runner.on_outcome(lambda operation, outcome: told["any"].append(outcome))

    @runner.on_outcome(outcomes=("dead",))
    def dead(operation, outcome):
        told["dead"].append(outcome)

    @runner.on_outcome(kinds=("email",))
    def email(operation, outcome):
        told["email"].append(outcome)

    return told


def test_a_listener_is_told_only_what_it_declared(sqlite_app, bell, heard):
    succeeding = new_op("heard-success")
    failing = new_op("heard-death", "permanent")

    runner.execute(succeeding, now=T0, clock=lambda: T0)
    runner.execute(failing, now=T0, clock=lambda: T0)

    assert heard == {"any": ["succeeded", "dead"], "dead": ["dead"], "email": []}


def test_registering_a_listener_twice_tells_it_once(sqlite_app, bell, monkeypatch):
    told = []
    monkeypatch.setattr(runner, "outcome_listeners", [])

    def listener(operation, outcome):
        told.append(outcome)

    runner.on_outcome(listener)
    runner.on_outcome(outcomes=("succeeded",))(listener)
    runner.execute(new_op("heard-once"), now=T0, clock=lambda: T0)

    assert told == ["succeeded"]
