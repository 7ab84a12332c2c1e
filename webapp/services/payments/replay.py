"""Replaying a stored Stripe event: its processing runs again, as a new operation.

Stripe's own re-deliveries of an event are dropped as duplicates (by design, the intake stores
each ``event.id`` once). An admin who needs an event processed again (a handler was fixed, a
purchase was repaired by hand) replays it: a new ``stripe.<type>`` operation with its own
idempotency key ``stripe-replay:<event id>:<n>``, created through the engine like any other and
listed in ``stripe_event_replays``. The handlers re-check state, so replaying an event that was
applied already changes nothing (``already_completed``: no second email, no second credit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from webapp.domain.states import State
from webapp.domain.text import text_problem
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, StripeEvent, StripeEventReplay
from webapp.services.engine.operations import create_operation
from webapp.services.engine.sql import insert_ignoring_conflicts
from webapp.services.payments.errors import Conflict, NotFound
from webapp.services.payments.intake import event_subject, is_handled, operation_name

# States in which an event's latest processing is still under way: a replay would race it.
IN_FLIGHT = (State.SCHEDULED.value, State.PENDING.value, State.RUNNING.value, State.RETRYING.value)


@dataclass(frozen=True)
class Replay:
    """A replay that was asked for: the event, its number and the operation it created."""

    event_id: str
    number: int
    operation_id: int


def replay_event(event_id: str, *, by: str | None, now: datetime | None = None) -> Replay:
    """Create the processing operation for a stored event again; commits (the worker is rung after).

    NotFound for an unknown event; Conflict (code ``not_replayable``) when no handler processes
    its type, its body was trimmed by retention, or its processing is still under way. Two
    concurrent replays of one event compute the same number, hence the same idempotency key:
    the second gets the first's operation (a double click replays once).
    """
    now = now or utcnow()
    storable = isinstance(event_id, str) and 0 < len(event_id) <= 255 and text_problem(event_id) is None
    row = db.session.get(StripeEvent, event_id) if storable else None
    if row is None:
        db.session.rollback()
        raise NotFound(f"no Stripe event {event_id!r} is stored")
    problem = _refusal(row)
    if problem:
        db.session.rollback()
        raise Conflict(f"Stripe event {event_id} cannot be replayed: {problem}", code="not_replayable")
    number = (
        db.session.execute(
            select(func.max(StripeEventReplay.number)).where(StripeEventReplay.event_id == event_id)
        ).scalar()
        or 0
    ) + 1
    data_object = json.loads(row.payload)["data"]["object"]
    operation = create_operation(
        operation_name(row.type),
        {
            "event_id": row.id,
            "type": row.type,
            "object_id": row.object_id,
            "received_at": row.received_at.isoformat(),
            "replay": number,
            "replayed_by": by,
        },
        idempotency_key=f"stripe-replay:{row.id}:{number}",
        subject=event_subject(data_object, row.object_id),
        now=now,
    )
    connection = db.session.connection()
    insert = insert_ignoring_conflicts(StripeEventReplay.__table__, connection.dialect.name)
    connection.execute(
        insert,
        {"event_id": row.id, "number": number, "operation_id": operation.id, "requested_by": by, "created_at": now},
    )
    db.session.commit()
    return Replay(row.id, number, operation.id)


def _refusal(row: StripeEvent) -> str | None:
    """Why this event cannot be replayed now, or None."""
    if not is_handled(row.type):
        return f"no handler processes {row.type} events (it was stored and ignored)"
    if not row.payload:
        return "its body was removed by retention; re-send it from the Stripe dashboard"
    try:
        event = json.loads(row.payload)
        if not isinstance(event["data"]["object"], dict):
            raise TypeError
    except (ValueError, RecursionError, KeyError, TypeError):
        return "its stored body is not an event with a data.object"
    if _latest_state(row) in IN_FLIGHT:
        return "its processing is still under way; wait for it to finish (or cancel it) first"
    return None


def _latest_state(row: StripeEvent) -> str | None:
    """The state of the event's most recent processing operation (a replay's, else the intake's)."""
    latest = (
        select(StripeEventReplay.operation_id)
        .where(StripeEventReplay.event_id == row.id, StripeEventReplay.operation_id.is_not(None))
        .order_by(StripeEventReplay.number.desc())
        .limit(1)
        .scalar_subquery()
    )
    operation_id = db.session.execute(select(latest)).scalar() or row.operation_id
    if operation_id is None:
        return None
    return db.session.execute(select(Operation.state).where(Operation.id == operation_id)).scalar()
