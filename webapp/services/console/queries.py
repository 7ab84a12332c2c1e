"""What the admin console reads: filtered, keyset-paginated failed operations, stats,
error fingerprints (the Issues view), related records, and streamed exports.

Filters arrive as a plain mapping (the blueprint passes ``request.args``); nothing here
touches the request. Every read ends its transaction, because on SQLite each transaction
holds the write lock that workers need.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta

from sqlalchemy import String, and_, case, cast, func, literal, literal_column, or_, select

from webapp.domain.fingerprints import FINGERPRINT_LENGTH, normalise_error
from webapp.domain.states import State
from webapp.domain.time import as_naive_utc, iso, utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.models.commerce import Customer, Purchase
from webapp.models.email import EmailLog
from webapp.services.engine.registry import KINDS

STATUSES = ("unresolved", "resolved", "all", "retrying", "scheduled")
RANGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
MAX_QUERY = 200
MAX_ID = 2**63 - 1  # the largest BIGINT: ids beyond it cannot exist
ISSUES_SHOWN = 200
# ``state = 'dead'`` as a literal, not a bound parameter: SQLite uses a partial index
# (``WHERE state = 'dead'``) only when it can see the query asks for exactly that.
DEAD = Operation.state == literal_column("'dead'")
# The Issues group of dead operations that carry no error at all (fingerprints are hex).
NO_FINGERPRINT = "none"
_FINGERPRINT = re.compile(f"[0-9a-f]{{{FINGERPRINT_LENGTH}}}")


class FilterError(ValueError):
    """A filter value the console does not understand (answered with a 400)."""


@dataclass(frozen=True)
class Filters:
    """The failed-operations filters, as they appear in the URL."""

    kind: str = ""
    name: str = ""
    status: str = "unresolved"
    range: str = "all"
    since: datetime | None = None
    until: datetime | None = None
    q: str = ""
    fingerprint: str = ""

    def to_args(self) -> dict:
        """The non-default filters as URL query arguments."""
        args = {}
        for key, value in asdict(self).items():
            default = getattr(Filters, key)
            if value not in (None, "") and value != default:
                args[key] = value.isoformat(timespec="minutes") if isinstance(value, datetime) else value
        return args

    def to_json(self) -> dict:
        """All filters as JSON-safe values, times in UTC ending in ``Z`` (a bulk job's record, the API)."""
        return {key: (iso(value) if isinstance(value, datetime) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping) -> Filters:
        """Filters as :meth:`to_json` recorded them (times with or without ``Z``); unknown keys are ignored."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key in ("since", "until"):
            if values.get(key):
                values[key] = as_naive_utc(datetime.fromisoformat(values[key]))
        return cls(**values)

    @property
    def dead_only(self) -> bool:
        """True for the dead-letter statuses (sorted by when they died)."""
        return self.status in ("unresolved", "resolved", "all")

    def describe(self) -> str:
        """A short human description, for confirmations and bulk jobs."""
        parts = [self.status]
        for label in ("kind", "name", "range", "q", "fingerprint"):
            value = getattr(self, label)
            if value and not (label == "range" and value == "all"):
                parts.append(f"{label}={value}")
        if self.since:
            parts.append(f"since={self.since:%Y-%m-%d %H:%M}")
        if self.until:
            parts.append(f"until={self.until:%Y-%m-%d %H:%M}")
        return ", ".join(parts)


def parse_filters(args: Mapping[str, str]) -> Filters:
    """Validate filters from a mapping of strings; raise :class:`FilterError` on bad values."""
    kind = (args.get("kind") or "").strip()
    if kind and kind not in KINDS:
        raise FilterError(f"kind must be one of {', '.join(KINDS)}")
    status = (args.get("status") or "unresolved").strip()
    if status not in STATUSES:
        raise FilterError(f"status must be one of {', '.join(STATUSES)}")
    range_ = (args.get("range") or "all").strip()
    if range_ not in RANGES:
        raise FilterError(f"range must be one of {', '.join(RANGES)}")
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        raise FilterError(f"search text is limited to {MAX_QUERY} characters")
    name = (args.get("name") or "").strip()[:120]
    if "\x00" in q or "\x00" in name:
        raise FilterError("search text and name cannot contain NUL characters")
    fingerprint = (args.get("fingerprint") or "").strip().lower()
    if fingerprint and fingerprint != NO_FINGERPRINT and not _FINGERPRINT.fullmatch(fingerprint):
        raise FilterError(f"fingerprint must be {FINGERPRINT_LENGTH} hex digits (from the Issues view)")
    return Filters(
        kind=kind,
        name=name,
        status=status,
        range=range_,
        since=_parse_time(args.get("since"), "since"),
        until=_parse_time(args.get("until"), "until"),
        q=q,
        fingerprint=fingerprint,
    )


def _parse_time(raw: str | None, label: str) -> datetime | None:
    if not raw or not raw.strip():
        return None
    try:
        return as_naive_utc(datetime.fromisoformat(raw.strip().replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise FilterError(f"{label} must be an ISO date or date-time (UTC), got {raw[:40]!r}") from None


# --- the filtered selection ---------------------------------------------------------------


def _sort_column(filters: Filters):
    """Dead operations by when they died (newest first); the others by when they are due (soonest first)."""
    return Operation.dead_at if filters.dead_only else Operation.next_attempt_at


def _descending(filters: Filters) -> bool:
    return filters.dead_only


def _time_column(filters: Filters):
    """The column the time range and since/until apply to: dead_at, or created_at for live states."""
    return Operation.dead_at if filters.dead_only else Operation.created_at


def filter_conditions(filters: Filters, now: datetime | None = None) -> list:
    """SQL conditions on ``Operation`` for ``filters``, fingerprint included."""
    now = now or utcnow()
    conditions = []
    if filters.status == "unresolved":
        conditions += [DEAD, Operation.resolved_at.is_(None)]
    elif filters.status == "resolved":
        conditions += [DEAD, Operation.resolved_at.is_not(None)]
    elif filters.status == "all":
        conditions.append(DEAD)
    else:
        conditions.append(Operation.state == filters.status)
    if filters.kind:
        conditions.append(Operation.kind == filters.kind)
    if filters.name:
        conditions.append(Operation.name == filters.name)
    if filters.fingerprint == NO_FINGERPRINT:
        conditions.append(Operation.error_fingerprint.is_(None))
    elif filters.fingerprint:
        conditions.append(Operation.error_fingerprint == filters.fingerprint)
    column = _time_column(filters)
    window = RANGES[filters.range]
    if window is not None:
        conditions.append(column >= now - window)
    if filters.since:
        conditions.append(column >= filters.since)
    if filters.until:
        conditions.append(column <= filters.until)
    if filters.q:
        conditions.append(_search(filters.q))
    return conditions


def _search(q: str):
    """Text search over subject, idempotency key, error message and the customer's email.

    The customer's email matches an email's recipient, and any operation whose payload
    ``purchase_id`` or whose subject (``purchase:<id>``, ``customer:<id>``) names a purchase
    or customer with that email (Stripe webhooks, welcome emails).
    """
    pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

    def like(column):
        return func.lower(column).like(pattern, escape="\\")

    # Compared as text: a payload's purchase_id is JSON (a number, or junk) and must never fail a cast.
    purchases_of_customer = (
        select(cast(Purchase.id, String))
        .join(Customer, Customer.id == Purchase.customer_id)
        .where(like(Customer.email))
    )
    # Webhooks and welcome emails name their purchase or customer in the subject instead.
    purchase_subjects = (
        select(literal("purchase:", String) + cast(Purchase.id, String))
        .join(Customer, Customer.id == Purchase.customer_id)
        .where(like(Customer.email))
    )
    customer_subjects = select(literal("customer:", String) + cast(Customer.id, String)).where(like(Customer.email))
    return or_(
        like(Operation.subject),
        like(Operation.idempotency_key),
        like(Operation.error_message),
        like(Operation.payload["to"].as_string()),
        cast(Operation.payload["purchase_id"].as_string(), String).in_(purchases_of_customer),
        Operation.subject.in_(purchase_subjects),
        Operation.subject.in_(customer_subjects),
    )


@dataclass
class Page:
    """One page of operations and the cursor of the next, if any."""

    rows: list
    next_cursor: str | None
    filters: Filters
    extra: dict = field(default_factory=dict)


def encode_cursor(sort_value: datetime | None, operation_id: int) -> str:
    """A keyset cursor: the last row's sort time and id."""
    return f"{sort_value.isoformat() if sort_value else ''}_{operation_id}"


def decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """Parse a cursor made by :func:`encode_cursor`; raise FilterError if it is malformed."""
    if not cursor:
        return None
    try:
        stamp, raw_id = cursor.rsplit("_", 1)
        if not raw_id.isascii() or not raw_id.isdigit() or int(raw_id) > MAX_ID:
            raise ValueError(raw_id)
        return datetime.fromisoformat(stamp), int(raw_id)
    except ValueError:
        raise FilterError("the page cursor is malformed; start again from the first page") from None


def list_operations(
    filters: Filters, *, cursor: str | None = None, limit: int = 50, now: datetime | None = None
) -> Page:
    """A page of operations matching ``filters``, keyset-paginated by (sort time, id).

    Dead operations come newest death first; live ones (retrying, scheduled) soonest due first.
    """
    column = _sort_column(filters)
    query = select(Operation).where(*filter_conditions(filters, now))
    after = decode_cursor(cursor)
    if after is not None:
        stamp, last_id = after
        if _descending(filters):
            query = query.where(or_(column < stamp, and_(column == stamp, Operation.id < last_id)))
        else:
            query = query.where(or_(column > stamp, and_(column == stamp, Operation.id > last_id)))
    order = (column.desc(), Operation.id.desc()) if _descending(filters) else (column.asc(), Operation.id.asc())
    rows = (
        db.session.execute(query.order_by(*order).limit(limit + 1).execution_options(populate_existing=True))
        .scalars()
        .all()
    )
    _detach(rows)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(getattr(rows[-1], column.key), rows[-1].id) if more and rows else None
    return Page(rows, next_cursor, filters)


def count_matching(filters: Filters, now: datetime | None = None) -> int:
    """How many operations match ``filters``."""
    total = db.session.execute(
        select(func.count()).select_from(Operation).where(*filter_conditions(filters, now))
    ).scalar_one()
    db.session.rollback()
    return total


def matching_ids_query(filters: Filters, now: datetime | None = None):
    """A SELECT of the ids matching ``filters`` (for INSERT ... SELECT and UPDATE ... WHERE id IN)."""
    return select(Operation.id).where(*filter_conditions(filters, now))


def get_operation_detail(operation_id: int) -> dict | None:
    """An operation with its attempts, related purchase, customer and email log, or None."""
    operation = db.session.get(Operation, operation_id, populate_existing=True)
    if operation is None:
        db.session.rollback()
        return None
    attempts = (
        db.session.execute(
            select(OperationAttempt)
            .where(OperationAttempt.operation_id == operation_id)
            .order_by(OperationAttempt.number, OperationAttempt.id)
        )
        .scalars()
        .all()
    )
    purchase, customer = _related_purchase(operation)
    conditions = [EmailLog.operation_id == operation_id]
    if purchase is not None:
        conditions.append(EmailLog.purchase_id == purchase.id)
    emails = (
        db.session.execute(select(EmailLog).where(or_(*conditions)).order_by(EmailLog.created_at.desc()).limit(50))
        .scalars()
        .all()
    )
    detail = {
        "operation": operation,
        "attempts": attempts,
        "purchase": purchase,
        "customer": customer,
        "emails": emails,
        "payload_json": json.dumps(operation.payload, indent=2, sort_keys=True, default=str),
    }
    if purchase is not None:
        _ = purchase.product  # load it before detaching: the template names the product
    _detach([operation, *attempts, *emails, *filter(None, [purchase, customer, purchase and purchase.product])])
    return detail


def _related_purchase(operation: Operation):
    payload = operation.payload or {}
    purchase_id = payload.get("purchase_id")
    if purchase_id is None and (operation.subject or "").startswith("purchase:"):
        purchase_id = operation.subject.split(":", 1)[1]
    purchase = None
    try:
        purchase = db.session.get(Purchase, int(purchase_id)) if purchase_id is not None else None
    except (TypeError, ValueError):
        purchase = None
    customer = None
    subject = operation.subject or ""
    if purchase is not None and purchase.customer_id is not None:
        customer = db.session.get(Customer, purchase.customer_id)
    elif (
        subject.startswith("customer:")
        and subject[9:].isascii()
        and subject[9:].isdigit()
        and int(subject[9:]) <= MAX_ID
    ):
        customer = db.session.get(Customer, int(subject[9:]))
    if customer is None and isinstance(payload.get("to"), str):
        customer = db.session.execute(select(Customer).where(Customer.email == payload["to"])).scalars().first()
    return purchase, customer


def get_operations(ids: Iterable[int]) -> list[Operation]:
    """Fresh, detached copies of the operations with these ids."""
    ids = list(ids)
    if not ids:
        return []
    rows = (
        db.session.execute(
            select(Operation)
            .where(Operation.id.in_(ids))
            .order_by(Operation.id.desc())
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    _detach(rows)
    return rows


def _detach(rows) -> None:
    """Detach loaded rows and end the read transaction (rows stay readable)."""
    for row in rows:
        if row in db.session:
            db.session.expunge(row)
    db.session.rollback()


# --- stat cards ---------------------------------------------------------------------------


def dead_letter_stats(now: datetime | None = None) -> dict:
    """The failed-operations cards: dead total, by kind, unresolved, new in the last 24 h."""
    now = now or utcnow()
    dead = Operation.state == State.DEAD.value
    # Grouping by an expression, not the bare column, keeps SQLite's planner on the state index
    # (a bare GROUP BY kind makes it walk a whole kind-leading index instead).
    kind = func.coalesce(Operation.kind, "")
    by_kind = dict(db.session.execute(select(kind, func.count()).where(dead).group_by(kind)).all())
    unresolved = db.session.execute(
        select(func.count()).select_from(Operation).where(dead, Operation.resolved_at.is_(None))
    ).scalar_one()
    recent = db.session.execute(
        select(func.count()).select_from(Operation).where(dead, Operation.dead_at >= now - timedelta(hours=24))
    ).scalar_one()
    db.session.rollback()
    return {
        "total": sum(by_kind.values()),
        "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS},
        "unresolved": unresolved,
        "last_24h": recent,
    }


def operation_names() -> list[str]:
    """Names of operations that exist, for the name filter."""
    names = db.session.execute(select(Operation.name).distinct().order_by(Operation.name)).scalars().all()
    db.session.rollback()
    return list(names)


# --- fingerprints and the Issues view -----------------------------------------------------


@dataclass
class Issue:
    """Failures that share a fingerprint."""

    fingerprint: str
    error_class: str | None = None
    sample: str = ""
    names: set = field(default_factory=set)
    count: int = 0
    unresolved: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass
class IssueList:
    """The Issues view: the largest groups, and how many groups there are in all."""

    issues: list
    total_groups: int
    total_failures: int


def issues(filters: Filters, now: datetime | None = None, shown: int = ISSUES_SHOWN) -> IssueList:
    """Dead operations matching ``filters`` grouped by stored fingerprint, largest group first.

    Grouped in SQL over every matching row (the partial index on dead operations covers the
    grouping); only the ``shown`` largest groups are returned, each with a sample message.
    """
    if not filters.dead_only:
        filters = replace(filters, status="unresolved")
    fingerprint = func.coalesce(Operation.error_fingerprint, NO_FINGERPRINT).label("fingerprint")
    rows = db.session.execute(
        select(
            fingerprint,
            Operation.name,
            func.count().label("count"),
            func.sum(case((Operation.resolved_at.is_(None), 1), else_=0)).label("unresolved"),
            func.min(Operation.dead_at).label("first_seen"),
            func.max(Operation.dead_at).label("last_seen"),
        )
        .where(*filter_conditions(filters, now))
        .group_by(fingerprint, Operation.name)
    ).all()
    groups: dict[str, Issue] = {}
    for row in rows:
        issue = groups.setdefault(row.fingerprint, Issue(row.fingerprint))
        issue.count += row.count
        issue.unresolved += int(row.unresolved or 0)
        issue.names.add(row.name)
        issue.first_seen = min(filter(None, [issue.first_seen, row.first_seen]), default=None)
        issue.last_seen = max(filter(None, [issue.last_seen, row.last_seen]), default=None)
    ordered = sorted(groups.values(), key=lambda issue: (-issue.count, issue.fingerprint))
    top = ordered[:shown]
    for issue in top:
        if issue.fingerprint == NO_FINGERPRINT:
            issue.sample = "(no error recorded)"
            continue
        sample = db.session.execute(
            select(Operation.error_class, Operation.error_message)
            .where(DEAD, Operation.error_fingerprint == issue.fingerprint)
            .order_by(Operation.dead_at.desc())
            .limit(1)
        ).first()
        if sample is not None:
            issue.error_class, issue.sample = sample.error_class, normalise_error(sample.error_message)
    db.session.rollback()
    return IssueList(top, len(groups), sum(issue.count for issue in groups.values()))


# --- export -------------------------------------------------------------------------------

EXPORT_FIELDS = (
    "id",
    "kind",
    "name",
    "state",
    "subject",
    "idempotency_key",
    "attempts",
    "max_attempts",
    "error_class",
    "error_kind",
    "error_message",
    "created_at",
    "last_attempt_at",
    "dead_at",
    "resolved_at",
    "resolved_by",
    "resolution_note",
    "payload",
)


def operation_record(operation: Operation, timestamp: Callable[[datetime], str] = datetime.isoformat) -> dict:
    """An operation as a JSON-safe dict (the export's and the API's shape), times written by ``timestamp``."""
    record = {}
    for name in EXPORT_FIELDS:
        value = getattr(operation, name)
        record[name] = timestamp(value) if isinstance(value, datetime) else value
    record["fingerprint"] = operation.error_fingerprint
    return record


def iter_matching(filters: Filters, now: datetime | None = None, batch: int = 500) -> Iterator[Operation]:
    """Every operation matching ``filters``, newest first, fetched in keyset batches."""
    cursor = None
    now = now or utcnow()
    while True:
        page = list_operations(filters, cursor=cursor, limit=batch, now=now)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def export_csv(filters: Filters, now: datetime | None = None) -> Iterator[str]:
    """The filtered set as CSV text chunks (header first), payload as a JSON column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow((*EXPORT_FIELDS, "fingerprint"))
    for operation in iter_matching(filters, now):
        record = operation_record(operation)
        record["payload"] = json.dumps(record["payload"], sort_keys=True, default=str)
        writer.writerow([_csv_safe(record[name]) for name in (*EXPORT_FIELDS, "fingerprint")])
        if buffer.tell() > 32_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value):
    # A cell starting with = + - @ is a formula to spreadsheets: prefix it so it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


def export_json(filters: Filters, now: datetime | None = None) -> Iterator[str]:
    """The filtered set as one JSON array, streamed a record at a time."""
    yield "["
    first = True
    for operation in iter_matching(filters, now):
        yield ("" if first else ",") + "\n" + json.dumps(operation_record(operation), default=str)
        first = False
    yield "\n]\n"
