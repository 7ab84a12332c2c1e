"""Stripe webhook intake: verify a delivery, store its event once, count what was refused.

The intake does no business work and makes no outbound call: it stores the event and its
processing operation in one transaction. The ``stripe.<event type>`` handlers do the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from webapp.domain.stripe_ids import event_problem
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, StripeEvent, WebhookRejection
from webapp.services.engine.doorbell import ring_now
from webapp.services.engine.operations import insert_operation, new_operation_row
from webapp.services.engine.registry import registry
from webapp.services.engine.sql import prepare, prepared_insert, run_alone

log = logging.getLogger("backstop.stripe")

SIGNATURE_TOLERANCE_SECONDS = 300
SIGNATURE_SCHEME = "v1"  # Stripe's current scheme; v0 (test-mode legacy) is not trusted
OPERATION_PREFIX = "stripe."

# Rejection reasons (stable: /metrics labels and the health page use them).
MISSING_SIGNATURE = "missing_signature"
INVALID_SIGNATURE = "invalid_signature"
STALE_TIMESTAMP = "stale_timestamp"
INVALID_PAYLOAD = "invalid_payload"
TOO_LARGE = "too_large"
NOT_CONFIGURED = "not_configured"
DATABASE_UNAVAILABLE = "database_unavailable"
REASONS = (
    MISSING_SIGNATURE,
    INVALID_SIGNATURE,
    STALE_TIMESTAMP,
    INVALID_PAYLOAD,
    TOO_LARGE,
    NOT_CONFIGURED,
    DATABASE_UNAVAILABLE,
)


class WebhookRejected(Exception):
    """A delivery that must not be stored; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Intake:
    """What happened to a verified delivery."""

    event_id: str
    event_type: str
    created: bool  # False: a replay of an event already stored
    processing_state: str
    operation_id: int | None


def verify(
    payload: bytes, header: str | None, secrets: Sequence[str], *, tolerance: int = SIGNATURE_TOLERANCE_SECONDS
) -> dict:
    """Check ``Stripe-Signature`` against every secret as the stripe SDK does; return the event.

    Raises :class:`WebhookRejected` naming why. A signature that matches but is older than
    ``tolerance`` is reported as stale rather than invalid, so an operator can tell clock
    trouble from forgery.
    """
    if not secrets:
        raise WebhookRejected(NOT_CONFIGURED, "webhook signing secret is not configured")
    if not header:
        raise WebhookRejected(MISSING_SIGNATURE, "missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(INVALID_SIGNATURE, "body is not UTF-8, so it cannot carry a valid signature") from None
    signed_at, signatures = _read_header(header)
    # The SDK's hmac, without its per-secret re-parse of the header and re-encode of the body.
    signed = b"%d." % signed_at + payload
    if not any(_signature_matches(signed, signatures, secret) for secret in secrets):
        raise WebhookRejected(INVALID_SIGNATURE, "no signature in Stripe-Signature matches the payload")
    if tolerance and signed_at < time.time() - tolerance:
        raise WebhookRejected(STALE_TIMESTAMP, f"signature timestamp is older than {tolerance} seconds")
    return parse_event(text)


def _read_header(header: str) -> tuple[int, list[str]]:
    """The ``t=`` timestamp and the ``v1=`` signatures, read exactly as the SDK reads them.

    Items split at commas, each at its first two ``=`` (``t=1=x`` is timestamp 1); the first
    ``t`` item is the timestamp; every ``v1`` item is a signature (``v0`` is ignored). A header
    the SDK could not read matches nothing.
    """
    items = [item.split("=", 2) for item in header.split(",")]
    try:
        signed_at = int(next(item[1] for item in items if item[0] == "t"))
        signatures = [item[1] for item in items if item[0] == SIGNATURE_SCHEME]
    except (StopIteration, IndexError, ValueError):
        raise WebhookRejected(INVALID_SIGNATURE, "Stripe-Signature has no readable timestamp") from None
    if not signatures:
        raise WebhookRejected(INVALID_SIGNATURE, "Stripe-Signature has no v1 signature")
    return signed_at, signatures


def _signature_matches(signed: bytes, signatures: list[str], secret: str) -> bool:
    """Whether any of ``signatures`` is the HMAC-SHA256 of ``signed`` keyed by ``secret`` (constant time)."""
    if not secret.strip(" \t\r\n\f\v"):  # the SDK refuses a blank secret
        return False
    expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest().encode()
    # Compared as bytes: a header value is Latin-1 text, and compare_digest refuses non-ASCII str.
    return any(hmac.compare_digest(expected, signature.encode("latin-1", "replace")) for signature in signatures)


def parse_event(text: str) -> dict:
    """The verified body as an event dict, or :class:`WebhookRejected` if it is not one."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise WebhookRejected(INVALID_PAYLOAD, "signed body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRejected(INVALID_PAYLOAD, "signed body is not a JSON object")
    if not _is_text(event.get("id"), 255):
        raise WebhookRejected(INVALID_PAYLOAD, "event has no valid id")
    if not _is_text(event.get("type"), 120):
        raise WebhookRejected(INVALID_PAYLOAD, "event has no valid type")
    if event.get("object") not in (None, "event"):
        raise WebhookRejected(INVALID_PAYLOAD, "body is not a Stripe event object")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookRejected(INVALID_PAYLOAD, "event has no data.object")
    object_id = data["object"].get("id")
    if object_id is not None and not _is_text(object_id, 255):
        raise WebhookRejected(INVALID_PAYLOAD, "event's data.object has an invalid id")
    if problem := event_problem(event, text=text):
        raise WebhookRejected(INVALID_PAYLOAD, problem)
    return event


def _is_text(value, max_length: int) -> bool:
    """A non-blank printable string no longer than ``max_length`` (no NUL, no lone surrogate:
    PostgreSQL could not store those, and a 503 would make Stripe retry it for days)."""
    return isinstance(value, str) and bool(value.strip()) and len(value) <= max_length and value.isprintable()


def operation_name(event_type: str) -> str:
    """The processing operation's name for an event type: ``stripe.<type>``."""
    return OPERATION_PREFIX + event_type


def is_handled(event_type: str) -> bool:
    """Whether a handler is registered for this event type."""
    return operation_name(event_type) in registry


def record_event(raw: str, event: dict, *, now: datetime | None = None) -> Intake:
    """Store a verified event once per id, with its processing operation; commits.

    One write transaction: the operation's INSERT (its key is the event id, so a replay
    inserts nothing) and the event's. A replay (same event id) changes nothing. Database
    errors propagate (the caller answers 503 so Stripe retries): an event is never
    acknowledged unless it is stored.
    """
    now = now or utcnow()
    try:
        intake = _store(raw, event, now)
    except IntegrityError:
        # A concurrent delivery of the same event stored it first, or something else is wrong.
        db.session.rollback()
        existing = _existing(event["id"])
        if existing is None:
            raise
        return existing
    if intake is None:  # a replay: its operation or its row exists
        db.session.rollback()
        # The operation outlived its event row only if retention removed the row: still a replay.
        return _existing(event["id"]) or Intake(event["id"], event["type"], False, "unknown", None)
    return intake


def _existing(event_id: str) -> Intake | None:
    row = db.session.execute(
        select(StripeEvent.type, StripeEvent.processing_state, StripeEvent.operation_id).where(
            StripeEvent.id == event_id
        )
    ).one_or_none()
    db.session.rollback()
    if row is None:
        return None
    return Intake(event_id, row.type, False, row.processing_state, row.operation_id)


def _store(raw: str, event: dict, now: datetime) -> Intake | None:
    """Insert and commit the event (and its operation, when a handler exists); None when it is a replay."""
    event_type = event["type"]
    data_object = event["data"]["object"]
    object_id = data_object.get("id")  # parse_event checked: printable text or None
    handled = is_handled(event_type)
    # Everything is worked out before the first INSERT begins the transaction (on SQLite, the
    # write lock every other writer waits for).
    row = {
        "id": event["id"],
        "type": event_type,
        "livemode": bool(event.get("livemode")),
        "api_version": _printable(event.get("api_version"), 40),
        "object_id": object_id,
        "payload": raw,
        "received_at": now,
        "processing_state": "received" if handled else "ignored",
        "operation_id": None,
        "processed_at": None if handled else now,
    }
    dialect = db.engine.dialect
    if dialect.name == "postgresql":  # without the session: its own statement, its own commit
        return _insert_in_one_round_trip(row, event, handled, dialect)
    # A handled event's duplicate id raises IntegrityError (a replay); an ignored one inserts nothing.
    insert = prepared_insert(StripeEvent.__table__, dialect, tuple(row), ignore_conflicts=not handled)
    if handled:
        row["operation_id"] = insert_operation(**_operation_of(row, data_object))
        if row["operation_id"] is None:
            return None  # the operation's key exists: this event was stored before
    if not insert.execute(db.session.connection(), insert.parameters(row)).rowcount:
        return None
    db.session.commit()
    return Intake(event["id"], event_type, True, row["processing_state"], row["operation_id"])


def _operation_of(row: dict, data_object: dict) -> dict:
    """The arguments that make the processing operation of the event stored as ``row``."""
    now = row["received_at"]
    return {
        "name": operation_name(row["type"]),
        "payload": {
            "event_id": row["id"],
            "type": row["type"],
            "object_id": row["object_id"],
            "received_at": now.isoformat(),
        },
        "idempotency_key": f"stripe-event:{row['id']}",
        "subject": event_subject(data_object, row["object_id"]),
        "now": now,
    }


def _insert_in_one_round_trip(row: dict, event: dict, handled: bool, dialect) -> Intake | None:
    """PostgreSQL: the event and its operation in one statement, its own transaction (autocommit).

    One round trip instead of four (BEGIN, two INSERTs, COMMIT), as atomic as before: the
    event's INSERT reads the operation's, so a replay (the operation's key exists) inserts
    neither, and a duplicate event id with a new key fails the whole statement (IntegrityError).
    The worker is rung once the statement has returned, that is, committed.
    """
    if not handled:
        events = StripeEvent.__table__
        insert = prepared_insert(events, dialect, tuple(row), (events.c.id,), ignore_conflicts=True)
        stored = run_alone(insert, row)
        return Intake(event["id"], row["type"], True, row["processing_state"], None) if stored else None
    operation = new_operation_row(**_operation_of(row, event["data"]["object"]))
    event_columns = tuple(name for name in row if name != "operation_id")
    parameters = {f"event_{name}": row[name] for name in event_columns}
    parameters.update({f"operation_{name}": value for name, value in operation.items()})
    stored = run_alone(prepare(_event_with_operation(event_columns, tuple(operation)), dialect), parameters)
    operation_id = None if stored is None else stored["operation_id"]
    if operation_id is None:
        return None  # the operation's key exists: this event was stored before
    ring_now(operation_id, stamp=row["received_at"])
    return Intake(event["id"], row["type"], True, row["processing_state"], operation_id)


@lru_cache(maxsize=4)
def _event_with_operation(event_columns: tuple[str, ...], operation_columns: tuple[str, ...]):
    """``WITH operation AS (INSERT ... ON CONFLICT DO NOTHING RETURNING id) INSERT INTO stripe_events
    SELECT ..., operation.id FROM operation RETURNING operation_id`` (parameters prefixed, so
    SQLAlchemy never takes one for another table's column)."""
    operations, events = Operation.__table__, StripeEvent.__table__
    operation = (
        pg_insert(operations)
        .values({name: bindparam(f"operation_{name}", type_=operations.c[name].type) for name in operation_columns})
        .on_conflict_do_nothing()
        .returning(operations.c.id)
        .cte("operation")
    )
    values = select(*(bindparam(f"event_{name}", type_=events.c[name].type) for name in event_columns), operation.c.id)
    return events.insert().from_select([*event_columns, "operation_id"], values).returning(events.c.operation_id)


def event_subject(data_object: dict, object_id: str | None) -> str | None:
    """The subject of an event's processing operation: its purchase, else its Stripe object."""
    metadata = data_object.get("metadata")
    purchase_id = _printable(metadata.get("purchase_id") if isinstance(metadata, dict) else None, 200)
    if purchase_id:
        return f"purchase:{purchase_id}"
    return f"stripe:{object_id}"[:255] if object_id else None


def _printable(value, max_length: int) -> str | None:
    """``value`` as text cut to ``max_length`` if it is a printable string or a number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value[:max_length] if isinstance(value, str) and value.strip() and value.isprintable() else None


def mark_event(event_id: str, state: str, *, now: datetime) -> None:
    """Set an event's processing state in the caller's transaction (the caller commits)."""
    db.session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id)
        .values(processing_state=state, processed_at=now if state == "processed" else None)
        .execution_options(synchronize_session=False)
    )


def count_rejection(reason: str, *, now: datetime | None = None) -> None:
    """Count one refused delivery under ``reason`` (one upsert; never stores the body).

    Counting must never turn a 4xx into a 500, so a database failure here is only logged.
    """
    now = now or utcnow()
    try:
        insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(WebhookRejection).values(reason=reason, count=1, last_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[WebhookRejection.reason], set_={"count": WebhookRejection.count + 1, "last_at": now}
        )
        db.session.execute(statement)
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("could not count webhook rejection %s: %s", reason, type(exc).__name__)


def rejection_counts() -> dict[str, int]:
    """Refused webhook deliveries so far, by reason (for /metrics and the health page)."""
    rows = db.session.execute(select(WebhookRejection.reason, WebhookRejection.count)).all()
    db.session.rollback()
    return {reason: count for reason, count in rows}
