"""The transition table is the README's diagram: every arrow drawn there, and nothing else."""

from __future__ import annotations

import pytest

from webapp.domain.states import State, can_transition

S = State
# Each arrow of the diagram, with the action that takes it.
ARROWS = {
    (S.SCHEDULED, S.PENDING): "run_at due (reconciler), or an admin reschedules to now",
    (S.SCHEDULED, S.SCHEDULED): "an admin reschedules to a later time",
    (S.SCHEDULED, S.RUNNING): "a worker claims it once due",
    (S.SCHEDULED, S.CANCELLED): "an admin cancels",
    (S.PENDING, S.RUNNING): "a worker claims it",
    (S.PENDING, S.PENDING): "an admin reschedules to now",
    (S.PENDING, S.SCHEDULED): "an admin reschedules to a later time",
    (S.PENDING, S.CANCELLED): "an admin cancels",
    (S.RUNNING, S.SUCCEEDED): "the handler returned",
    (S.RUNNING, S.RETRYING): "a transient error or a deferral",
    (S.RUNNING, S.DEAD): "a permanent error, or the attempts are exhausted",
    (S.RUNNING, S.PENDING): "the worker was interrupted and put the attempt back",
    (S.RETRYING, S.RUNNING): "a worker claims it once the backoff is due",
    (S.RETRYING, S.PENDING): "an admin reschedules to now",
    (S.RETRYING, S.SCHEDULED): "an admin reschedules to a later time",
    (S.RETRYING, S.CANCELLED): "an admin cancels",
    (S.DEAD, S.PENDING): "an admin retry or the auto-requeue",
}
PAIRS = [(source, target) for source in State for target in State]


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_a_move_is_allowed_exactly_when_the_diagram_draws_it(source, target):
    assert can_transition(source, target) == ((source, target) in ARROWS)
