"""An attempt's duration_ms is the time its handler really ran, on the engine's monotonic timer."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.engine.scripted import T0, Boom, new_op
from tests.support.logs import records_of
from tests.support.reads import attempts_of
from webapp.services.engine import runner


class Timer:
    """A monotonic timer that moves only when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timer(monkeypatch):
    fake = Timer()
    monkeypatch.setattr(runner, "monotonic", fake)
    return fake


@pytest.fixture
def attempt_log():
    """The records of the engine's one-line-per-attempt log (its logger does not propagate)."""
    with records_of("backstop.engine") as records:
        yield records


def runs_for(timer: Timer, seconds: float, then=None):
    """A script step that takes ``seconds`` of the timer's time, then raises ``then`` if given."""

    def step(ctx):
        timer.now += seconds
        if then is not None:
            raise then

    return step


def test_a_successful_attempt_records_how_long_the_handler_ran(sqlite_app, timer, attempt_log):
    operation_id = new_op("timed-success", runs_for(timer, 1.25))

    assert runner.execute(operation_id, now=T0, clock=lambda: T0).outcome == "succeeded"

    [attempt] = attempts_of(operation_id)
    assert attempt.duration_ms == 1250
    [line] = attempt_log
    assert line.duration_ms == 1250 and "in 1250 ms" in line.getMessage()
    assert line.error_class is None


def test_a_failed_attempt_records_how_long_the_handler_ran_before_failing(sqlite_app, timer, attempt_log):
    operation_id = new_op("timed-failure", runs_for(timer, 2.0, then=Boom("slow and broken")))

    assert runner.execute(operation_id, now=T0, clock=lambda: T0).outcome == "retrying"

    [attempt] = attempts_of(operation_id)
    assert (attempt.outcome, attempt.duration_ms) == ("failed", 2000)
    [line] = attempt_log
    assert (line.outcome, line.duration_ms) == ("retrying", 2000)
    assert line.error_class == "tests.engine.scripted.Boom"


def test_an_attempt_put_back_at_the_instant_it_started_lasted_zero_ms(sqlite_app):
    operation_id = new_op("instant-put-back")
    runner.claim(operation_id, now=T0)

    runner.put_back(operation_id, 1, now=T0, reason="worker stopping")

    assert attempts_of(operation_id)[0].duration_ms == 0


def test_a_clock_that_went_backwards_never_gives_a_negative_duration(sqlite_app):
    operation_id = new_op("clock-skew")
    runner.claim(operation_id, now=T0)

    runner.put_back(operation_id, 1, now=T0 - timedelta(seconds=3), reason="worker stopping")

    assert attempts_of(operation_id)[0].duration_ms == 0
