"""Every state change the engine and the admin actions make is an arrow of the state diagram."""

from __future__ import annotations

from datetime import timedelta

from tests.engine.scripted import T0, Boom, new_op
from tests.support.reads import load
from webapp.domain.errors import PermanentError
from webapp.domain.states import can_transition
from webapp.services.engine import operations, runner


def test_a_life_with_every_kind_of_outcome_moves_only_along_the_diagram(sqlite_app, bell):
    states: list[str] = []

    def seen_running_then(exc=None):
        def step(ctx):
            states.append(load(ctx.operation.id).state)  # as the handler runs
            if exc is not None:
                raise exc

        return step

    operation_id = new_op(
        "a-full-life", seen_running_then(Boom()), seen_running_then(PermanentError("no")), seen_running_then()
    )
    states.append(load(operation_id).state)
    now = T0

    def after(action):
        action()
        states.append(load(operation_id).state)

    after(lambda: runner.claim(operation_id, now=now))
    after(lambda: runner.put_back(operation_id, 1, now=now, reason="worker interrupted"))
    after(lambda: runner.execute(operation_id, now=now, clock=lambda: now))  # transient
    now += timedelta(minutes=1)
    after(lambda: runner.execute(operation_id, now=now, clock=lambda: now))  # permanent
    after(lambda: operations.retry_dead(operation_id, now=now))
    after(lambda: runner.execute(operation_id, now=now, clock=lambda: now))  # ok

    assert states == [
        "pending",
        "running",
        "pending",
        "running",
        "retrying",
        "running",
        "dead",
        "pending",
        "running",
        "succeeded",
    ]
    assert all(can_transition(before, after) for before, after in zip(states, states[1:], strict=False))
