"""The console's filters: parsed from the URL's query mapping into ``Filters``, turned into SQL conditions.

Nothing here touches the request; the blueprint passes ``request.args``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import String, cast, func, literal, literal_column, or_, select

from webapp.domain.fingerprints import FINGERPRINT_LENGTH
from webapp.domain.time import as_naive_utc, iso, utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.models.payments import Customer, Purchase
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


def sort_column(filters: Filters):
    """The column a list is ordered (and keyset-paginated) by."""
    """Dead operations by when they died (newest first); the others by when they are due (soonest first)."""
    return Operation.dead_at if filters.dead_only else Operation.next_attempt_at


def descending(filters: Filters) -> bool:
    """Dead letters list newest first; live states list soonest due first."""
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
