"""The operations explorer's permalink: one operation's timeline and the operations and events around it.

Every read ends its transaction (failures.get_operation_detail does the same), because on
SQLite each open transaction holds the lock workers need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Operation
from webapp.models.payments import StripeEvent
from webapp.services.console import audit
from webapp.services.console.failures import get_operation_detail

# How many operations about the same subject the permalink lists.
RELATED_LIMIT = 20
STRIPE_PREFIX = "stripe."


@dataclass
class TimelineItem:
    """One moment in an operation's life, as the timeline shows it."""

    at: datetime | None
    kind: str  # created, scheduled, rung, attempt, admin, succeeded, dead, cancelled
    title: str
    detail: str | None = None
    outcome: str | None = None
    duration_ms: int | None = None
    error: str | None = None
    actor: str | None = None
    approximate: bool = False
    result: dict | None = None
    extra: dict = field(default_factory=dict)


def operation_page(operation_id: int) -> dict | None:
    """Everything the permalink shows: the detail (payload, attempts, purchase, customer, emails),
    the timeline, the related operations and the Stripe events behind them; None if there is no such operation."""
    detail = get_operation_detail(operation_id)
    if detail is None:
        return None
    operation = detail["operation"]
    related = related_operations(operation)
    detail["timeline"] = timeline(operation, detail["attempts"])
    detail["related"] = related
    detail["stripe_events"] = stripe_events(operation, related)
    return detail


def timeline(operation: Operation, attempts: list) -> list[TimelineItem]:
    """Created, scheduled, the last ring, every attempt, every admin action and the end, oldest first."""
    items = [TimelineItem(operation.created_at, "created", f"Created ({operation.kind} {operation.name})")]
    if operation.run_at:
        items.append(TimelineItem(operation.run_at, "scheduled", "Scheduled to run"))
    if operation.enqueued_at:
        # Only the latest ring is recorded (operations.enqueued_at), not each one.
        items.append(
            TimelineItem(
                operation.enqueued_at,
                "rung",
                "Doorbell rung (latest)",
                detail="only the most recent ring is recorded",
            )
        )
    for attempt in attempts:
        error = f"{attempt.error_class}: {attempt.error_message}" if attempt.error_class else attempt.error_message
        items.append(
            TimelineItem(
                attempt.started_at,
                "attempt",
                f"Attempt {attempt.number}",
                outcome=attempt.outcome,
                duration_ms=attempt.duration_ms,
                error=error,
                detail=attempt.worker,
            )
        )
    items += admin_actions(operation, attempts)
    if operation.succeeded_at:
        items.append(TimelineItem(operation.succeeded_at, "succeeded", "Succeeded", result=operation.result))
    if operation.dead_at:
        items.append(
            TimelineItem(
                operation.dead_at,
                "dead",
                "Dead-lettered",
                error=f"{operation.error_class}: {operation.error_message}"
                if operation.error_class
                else operation.error_message,
            )
        )
    # Stable by time; untimed items (none today) last.
    return sorted(items, key=lambda item: (item.at is None, item.at or datetime.min))


def admin_actions(operation: Operation, attempts: list) -> list[TimelineItem]:
    """The admin actions on this operation, as timeline items: the audit log's, oldest first.

    An operation with no audit entry (acted on before the audit log existed) shows what its row
    kept instead: its resolution, the latest retry's actor (in the resolution note, without a
    time) and a cancellation.
    """
    entries = audit.entries_for("operation", str(operation.id))
    if entries:
        return [_audit_item(entry) for entry in entries]
    return _row_actions(operation, attempts)


ACTION_TITLES = {
    "operation.retry": "Retried",
    "operation.resolve": "Resolved",
    "operation.cancel": "Cancelled",
    "operation.run_now": "Run now",
    "operation.reschedule": "Rescheduled",
}


def _audit_item(entry) -> TimelineItem:
    title = ACTION_TITLES.get(entry.action) or entry.action
    kind = "cancelled" if entry.action == "operation.cancel" else "admin"
    return TimelineItem(entry.created_at, kind, title, detail=entry.note, actor=entry.actor)


def _row_actions(operation: Operation, attempts: list) -> list[TimelineItem]:
    """What the operation row keeps of admin actions, for rows older than the audit log."""
    items = []
    note = operation.resolution_note or ""
    if operation.resolved_at:
        items.append(
            TimelineItem(operation.resolved_at, "admin", "Resolved", detail=note or None, actor=operation.resolved_by)
        )
    elif note.startswith("retried by "):
        # The retry's time is not stored: it happened after the last dead-lettered attempt and
        # before the next attempt (if any), so the item sits just before that attempt.
        after_dead = _attempt_after_last_dead(attempts)
        items.append(
            TimelineItem(
                after_dead.started_at if after_dead else operation.updated_at,
                "admin",
                "Retried",
                actor=note.removeprefix("retried by "),
                approximate=True,
                detail="time not recorded: between the dead-lettered attempt and the next one",
            )
        )
    if operation.cancelled_at:
        items.append(
            TimelineItem(
                operation.cancelled_at,
                "cancelled",
                "Cancelled",
                actor=note.removeprefix("cancelled by ") if note.startswith("cancelled by ") else None,
            )
        )
    return items


def _attempt_after_last_dead(attempts: list):
    dead = [index for index, attempt in enumerate(attempts) if attempt.outcome == "dead"]
    if dead and dead[-1] + 1 < len(attempts):
        return attempts[dead[-1] + 1]
    return None


def related_operations(operation: Operation) -> list[Operation]:
    """Other operations about the same subject (the subject index), newest first."""
    if not operation.subject:
        return []
    rows = (
        db.session.execute(
            select(Operation)
            .where(Operation.subject == operation.subject, Operation.id != operation.id)
            .order_by(Operation.created_at.desc(), Operation.id.desc())
            .limit(RELATED_LIMIT)
        )
        .scalars()
        .all()
    )
    for row in rows:
        db.session.expunge(row)
    db.session.rollback()
    return list(rows)


def stripe_events(operation: Operation, related: list[Operation]) -> list[dict]:
    """The Stripe events behind this operation and its related ones (event id, type, received, state, operation)."""
    ids = {}
    for candidate in (operation, *related):
        event_id = (candidate.payload or {}).get("event_id") if candidate.name.startswith(STRIPE_PREFIX) else None
        if isinstance(event_id, str) and event_id:
            ids[event_id] = candidate.id
    if not ids:
        return []
    rows = db.session.execute(
        select(StripeEvent.id, StripeEvent.type, StripeEvent.received_at, StripeEvent.processing_state).where(
            StripeEvent.id.in_(list(ids))
        )
    ).all()
    db.session.rollback()
    found = {row.id: row for row in rows}
    events = []
    for event_id, operation_id in ids.items():
        row = found.get(event_id)
        events.append(
            {
                "id": event_id,
                "type": row.type if row else None,
                "received_at": row.received_at if row else None,
                "processing_state": row.processing_state if row else "not stored (removed by retention?)",
                "operation_id": operation_id,
            }
        )
    return sorted(events, key=lambda event: (event["received_at"] is None, event["received_at"] or datetime.min))
