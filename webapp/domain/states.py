"""Operation states and the transitions allowed between them (ARCHITECTURE.md's diagram)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where an operation is in its life."""

    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


class InvalidTransition(ValueError):
    """Raised when code asks for a state change the diagram does not allow."""

    def __init__(self, source: State, target: State):
        super().__init__(f"operation cannot go from {source} to {target}")
        self.source = source
        self.target = target


TRANSITIONS: dict[State, frozenset[State]] = {
    # An operation waiting to run (scheduled, pending, or retrying after a backoff) may be
    # cancelled or rescheduled by an admin: to a later time (scheduled) or to now (pending).
    State.SCHEDULED: frozenset({State.PENDING, State.RUNNING, State.CANCELLED, State.SCHEDULED}),
    State.PENDING: frozenset({State.RUNNING, State.CANCELLED, State.SCHEDULED, State.PENDING}),
    # running -> pending is an interrupted or crashed attempt put back without penalty;
    # running -> retrying is a transient failure or a deferral.
    State.RUNNING: frozenset({State.SUCCEEDED, State.RETRYING, State.DEAD, State.PENDING}),
    State.RETRYING: frozenset({State.RUNNING, State.PENDING, State.CANCELLED, State.SCHEDULED}),
    State.SUCCEEDED: frozenset(),
    State.DEAD: frozenset({State.PENDING}),
    State.CANCELLED: frozenset(),
}

# States from which a worker may claim an operation once it is due.
CLAIMABLE: frozenset[State] = frozenset({State.SCHEDULED, State.PENDING, State.RETRYING})
# States in which an operation still has work ahead of it.
ACTIVE: frozenset[State] = frozenset({State.SCHEDULED, State.PENDING, State.RUNNING, State.RETRYING})
TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.DEAD, State.CANCELLED})


def can_transition(source: State, target: State) -> bool:
    """Tell whether the diagram allows going from ``source`` to ``target``."""
    return target in TRANSITIONS[State(source)]


def check_transition(source: State, target: State) -> State:
    """Return ``target`` if the move is allowed, else raise :class:`InvalidTransition`."""
    if not can_transition(source, target):
        raise InvalidTransition(State(source), State(target))
    return State(target)
