"""The Stripe event log: stored events, newest first, with the operations each one caused.

An event's operations are its intake's (``StripeEvent.operation_id``) and its replays'
(``stripe_event_replays``): one UNION query over a page of events, both halves indexed.
Bodies are shown redacted: nothing secret-looking (``client_secret``, API keys) leaves here.
Every read ends its transaction (on SQLite each transaction holds the write lock).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import Integer, String, and_, cast, null, or_, select, union_all

from webapp.domain.text import text_problem
from webapp.domain.time import as_naive_utc
from webapp.extensions import db
from webapp.models import Operation, StripeEvent, StripeEventReplay
from webapp.models.payments import EVENT_STATES
from webapp.services.console.filters import FilterError
from webapp.services.payments.handlers import HANDLED

MAX_QUERY = 255
REDACTED = "[redacted]"
# Keys whose values are credentials whatever they hold (Stripe's client_secret on payment
# intents and checkout sessions, anything else named *secret*, *password*, *token*).
_SECRET_KEY = re.compile(r"secret|password|passwd|token|api_?key", re.IGNORECASE)
# Values that look like Stripe keys or signing secrets, wherever they appear.
_SECRET_VALUE = re.compile(r"^(sk|rk)_(live|test)_|^whsec_|_secret_[A-Za-z0-9]")


@dataclass(frozen=True)
class EventFilters:
    """The event log's filters, as they appear in the URL."""

    q: str = ""  # an event id or an object id (exact)
    type: str = ""
    state: str = ""

    def to_args(self) -> dict:
        """The non-empty filters as URL query arguments."""
        return {key: value for key, value in asdict(self).items() if value}


@dataclass
class EventPage:
    """One page of events (each with ``.operations``) and the next page's cursor."""

    rows: list
    next_cursor: str | None
    filters: EventFilters


@dataclass(frozen=True)
class OperationLink:
    """An operation an event caused: the intake's (``replay`` None) or a replay's."""

    id: int
    name: str
    state: str
    replay: int | None
    created_at: datetime | None
    requested_by: str | None = None


@dataclass
class EventDetail:
    """One event, its operations and its redacted, pretty-printed body."""

    event: StripeEvent
    operations: list[OperationLink] = field(default_factory=list)
    body: object = None  # the redacted body as JSON (None once retention trimmed it)
    body_text: str = ""


def possible_event_id(event_id: str) -> bool:
    """Whether a stored event could have this id (at most 255 characters a database can hold)."""
    return 0 < len(event_id) <= MAX_QUERY and text_problem(event_id) is None


def handled_types() -> list[str]:
    """The event types a handler processes (the type filter's suggestions)."""
    return sorted(HANDLED)


def parse_event_filters(args: Mapping[str, str]) -> EventFilters:
    """Validate the event log's filters; FilterError names the bad one."""
    values = {}
    for key in ("q", "type", "state"):
        value = (args.get(key) or "").strip()
        if len(value) > MAX_QUERY:
            raise FilterError(f"{key} is limited to {MAX_QUERY} characters")
        if problem := text_problem(value):
            raise FilterError(f"{key} {problem}")
        values[key] = value
    if values["state"] and values["state"] not in EVENT_STATES:
        raise FilterError(f"state must be one of {', '.join(EVENT_STATES)}")
    return EventFilters(**values)


def encode_cursor(received_at: datetime, event_id: str) -> str:
    """A keyset cursor: the last row's received time and id (ISO times hold no underscore)."""
    return f"{received_at.isoformat()}_{event_id}"


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """Parse :func:`encode_cursor`'s output; FilterError if it is malformed."""
    if not cursor:
        return None
    stamp, _, event_id = cursor.partition("_")
    try:
        if not event_id or len(event_id) > MAX_QUERY or text_problem(event_id):
            raise ValueError(cursor)
        return as_naive_utc(datetime.fromisoformat(stamp)), event_id
    except ValueError:
        raise FilterError("the page cursor is malformed; start again from the first page") from None


def list_events(filters: EventFilters, *, cursor: str | None = None, limit: int = 50) -> EventPage:
    """A page of stored events matching ``filters``, newest first (keyset by received time, id)."""
    rows = db.session.execute(events_query(filters, cursor, limit + 1).execution_options(populate_existing=True))
    rows = rows.scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    links = operations_for([row.id for row in rows])
    _detach(rows)
    for row in rows:
        row.operations = links.get(row.id, [])
    next_cursor = encode_cursor(rows[-1].received_at, rows[-1].id) if more and rows else None
    return EventPage(rows, next_cursor, filters)


def events_query(filters: EventFilters, cursor: str | None, limit: int):
    """The SELECT of one page: each filter is the leading column of an index ordered by received time."""
    query = select(StripeEvent)
    if filters.q:
        query = query.where(or_(StripeEvent.id == filters.q, StripeEvent.object_id == filters.q))
    if filters.type:
        query = query.where(StripeEvent.type == filters.type)
    if filters.state:
        query = query.where(StripeEvent.processing_state == filters.state)
    after = decode_cursor(cursor)
    if after is not None:
        stamp, last_id = after
        query = query.where(
            or_(StripeEvent.received_at < stamp, and_(StripeEvent.received_at == stamp, StripeEvent.id < last_id))
        )
    return query.order_by(StripeEvent.received_at.desc(), StripeEvent.id.desc()).limit(limit)


def operations_for(event_ids: Iterable[str]) -> dict[str, list[OperationLink]]:
    """Every operation each event caused (intake first, then replays in order), in one query."""
    event_ids = list(event_ids)
    if not event_ids:
        return {}
    intake = (
        select(
            StripeEvent.id.label("event_id"),
            Operation.id,
            Operation.name,
            Operation.state,
            cast(null(), Integer).label("replay"),
            Operation.created_at,
            cast(null(), String).label("requested_by"),
        )
        .join(Operation, Operation.id == StripeEvent.operation_id)
        .where(StripeEvent.id.in_(event_ids))
    )
    replays = (
        select(
            StripeEventReplay.event_id,
            Operation.id,
            Operation.name,
            Operation.state,
            StripeEventReplay.number,
            Operation.created_at,
            StripeEventReplay.requested_by,
        )
        .join(Operation, Operation.id == StripeEventReplay.operation_id)
        .where(StripeEventReplay.event_id.in_(event_ids))
    )
    found: dict[str, list[OperationLink]] = {}
    for row in db.session.execute(union_all(intake, replays)).all():
        found.setdefault(row.event_id, []).append(
            OperationLink(row.id, row.name, row.state, row.replay, row.created_at, row.requested_by)
        )
    for links in found.values():
        links.sort(key=lambda link: (link.replay or 0, link.id))
    return found


def get_event(event_id: str) -> EventDetail | None:
    """One stored event with its operations and its redacted body, or None."""
    row = db.session.get(StripeEvent, event_id, populate_existing=True) if possible_event_id(event_id) else None
    if row is None:
        db.session.rollback()
        return None
    links = operations_for([row.id]).get(row.id, [])
    _detach([row])
    body = parsed_body(row.payload)
    text = "" if body is None else json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False)
    return EventDetail(row, links, body, text)


def parsed_body(payload: str | None):
    """The stored body as redacted JSON; a body that does not parse is shown as redacted text."""
    if not payload:
        return None
    try:
        return redact(json.loads(payload))
    except (ValueError, RecursionError):
        return REDACTED if _SECRET_VALUE.search(payload) else payload


def redact(value):
    """``value`` with every secret-looking key's value and every key-like string replaced."""
    if isinstance(value, dict):
        return {key: REDACTED if _SECRET_KEY.search(str(key)) else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str) and _SECRET_VALUE.search(value):
        return REDACTED
    return value


def _detach(rows) -> None:
    for row in rows:
        if row in db.session:
            db.session.expunge(row)
    db.session.rollback()
