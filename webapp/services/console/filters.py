"""The console's filters: parsed from the URL's query mapping into ``Filters``, turned into SQL conditions.

Nothing here touches the request; the blueprint passes ``request.args``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import String, cast, false, func, literal, literal_column, or_, select, union_all

from webapp.domain.fingerprints import FINGERPRINT_LENGTH
from webapp.domain.states import State
from webapp.domain.text import text_problem
from webapp.domain.time import as_naive_utc, iso, utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.models.payments import Customer, Purchase
from webapp.services.console import search_index
from webapp.services.engine.registry import KINDS

STATUSES = ("unresolved", "resolved", "all", "retrying", "scheduled", "due", "recovered")

# The operations explorer filters by any state instead of a status (empty: every state).
STATES = tuple(state.value for state in State)

# What the explorer's search box searches: "auto" guesses from the text (evt_... is an event,
# an address a customer, digits a purchase or an operation id, key:like:text a subject or key).
# Every kind but "error" is an indexed lookup; see search_condition.
SEARCHES = ("auto", "subject", "customer", "purchase", "event", "key", "error")

# Error text has no index: it is searched over failed operations (dead, unless a state is
# chosen) created in this window, unless the filters set a time range themselves.
ERROR_SEARCH_WINDOW = timedelta(days=7)
# How many customers a customer search follows, and how many of their purchases.
MAX_CUSTOMERS = 20
MAX_PURCHASES = 500

# "due": waiting past its time (the health page's oldest-due and queue cards link here);
# "recovered": succeeded after more than one attempt (the time-to-success card links here).
DUE_STATES = ("pending", "retrying", "scheduled")


RANGES = {
    "today": None,  # since 00:00 UTC today (not a fixed length)
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
    """The console's filters, as they appear in the URL.

    The failed-operations page filters by ``status`` (dead letters by default). The operations
    explorer has no status (``""``): it filters by ``state`` (any, by default) and searches by
    the kind of thing named in ``search``.
    """

    kind: str = ""
    name: str = ""
    status: str = "unresolved"
    range: str = "all"
    since: datetime | None = None
    until: datetime | None = None
    q: str = ""
    fingerprint: str = ""
    state: str = ""
    search: str = ""

    def to_args(self) -> dict:
        """The non-default filters as URL query arguments."""
        args = {}
        for key, value in asdict(self).items():
            default = getattr(Filters, key)
            if value not in (None, "") and value != default:
                args[key] = value.isoformat(timespec="minutes") if isinstance(value, datetime) else value
        return args

    def without(self, key: str) -> dict:
        """The URL query arguments of these filters with ``key`` back at its default (a chip's ×)."""
        args = self.to_args()
        args.pop(key, None)
        return args

    def chips(self) -> list[tuple[str, str]]:
        """The active (non-default) filters as ``(key, shown value)`` pairs, in the filter bar's order."""
        shown = []
        for key, value in self.to_args().items():
            if isinstance(getattr(self, key), datetime):
                value = f"{value.replace('T', ' ')} UTC"
            shown.append((key, value))
        return shown

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
    def explorer(self) -> bool:
        """True for the operations explorer's filters (every state, newest created first)."""
        return self.status == ""

    @property
    def error_window_applies(self) -> bool:
        """True when an error-text search is bounded to ERROR_SEARCH_WINDOW (no time range chosen)."""
        return (
            bool(self.q)
            and self.explorer
            and self.search == "error"
            and self.range == "all"
            and self.since is None
            and self.until is None
        )

    @property
    def dead_only(self) -> bool:
        """True for the dead-letter statuses (sorted by when they died)."""
        return self.status in ("unresolved", "resolved", "all")

    def describe(self, error_text: str | None = None) -> str:
        """A short human description, for confirmations and bulk jobs (a fingerprint as its ``error_text``)."""
        parts = [self.status or (f"state={self.state}" if self.state else "any state")]
        for label in ("kind", "name", "range", "search", "q", "fingerprint"):
            value = getattr(self, label)
            if label == "fingerprint" and value and error_text:
                parts.append(f'error "{error_text}"')
            elif value and not (label == "range" and value == "all"):
                parts.append(f"{label}={value}")
        if self.since:
            parts.append(f"since={self.since:%Y-%m-%d %H:%M} UTC")
        if self.until:
            parts.append(f"until={self.until:%Y-%m-%d %H:%M} UTC")
        return ", ".join(parts)


def parse_filters(args: Mapping[str, str], *, explorer: bool | None = None) -> Filters:
    """Validate filters from a mapping of strings; raise :class:`FilterError` on bad values.

    ``explorer`` selects the explorer's filters (``state`` and ``search``, no ``status``);
    None decides from the arguments: a ``state`` or ``search`` asks for the explorer.
    """
    if explorer is None:
        explorer = "state" in args or "search" in args
    kind = (args.get("kind") or "").strip()
    if kind and kind not in KINDS:
        raise FilterError(f"kind must be one of {', '.join(KINDS)}")
    state, search = (args.get("state") or "").strip(), (args.get("search") or "").strip()
    if explorer:
        if (args.get("status") or "").strip():
            raise FilterError(f"filter by state ({', '.join(STATES)}), not status, when listing every state")
        if state and state not in STATES:
            raise FilterError(f"state must be one of {', '.join(STATES)} (or empty for every state)")
        if search and search not in SEARCHES:
            raise FilterError(f"search must be one of {', '.join(SEARCHES)}")
        status = ""
    else:
        status = (args.get("status") or "unresolved").strip()
        if status not in STATUSES:
            raise FilterError(f"status must be one of {', '.join(STATUSES)}")
        state = search = ""
    range_ = (args.get("range") or "all").strip()
    if range_ not in RANGES:
        raise FilterError(f"range must be one of {', '.join(RANGES)}")
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        raise FilterError(f"search text is limited to {MAX_QUERY} characters")
    name = (args.get("name") or "").strip()[:120]
    for label, value in (("search text", q), ("name", name)):
        if problem := text_problem(value):
            raise FilterError(f"{label} {problem}")
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
        state=state,
        search="" if search == "auto" else search,
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
    """Dead operations by when they died (newest first), recovered ones by when they succeeded;
    the others by when they are due (soonest first); the explorer's by when they were created."""
    if filters.explorer:
        return Operation.created_at
    if filters.status == "recovered":
        return Operation.succeeded_at
    return Operation.dead_at if filters.dead_only else Operation.next_attempt_at


def descending(filters: Filters) -> bool:
    """Dead letters, recoveries and the explorer list newest first; live states list soonest due first."""
    return filters.dead_only or filters.status in ("recovered", "")


def _time_column(filters: Filters):
    """The column the time range and since/until apply to: dead_at, succeeded_at, or created_at."""
    if filters.status == "recovered":
        return Operation.succeeded_at
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
    elif filters.status == "due":
        conditions += [Operation.state.in_(DUE_STATES), Operation.next_attempt_at <= now]
    elif filters.status == "recovered":
        conditions += [Operation.state == "succeeded", Operation.attempts > 1]
    elif filters.status:
        conditions.append(Operation.state == filters.status)
    if filters.q and filters.dead_only and not filters.explorer:
        # The text search's candidates are the selective part: SQLite without statistics would
        # otherwise walk every dead row's index entry in date order to find them.
        conditions = [search_index.probable(condition) for condition in conditions]
    if filters.state:
        # As a literal, like DEAD: SQLite then also sees that the dead-only partial indexes apply.
        conditions.append(Operation.state == literal_column(f"'{State(filters.state).value}'"))
    # Every state but succeeded holds a small share of the table: with one chosen, the explorer walks
    # that state's index and tests kind and name on its rows. Spelled as expressions (``kind || ''``)
    # so SQLite, which keeps no statistics, cannot prefer a kind or name index and read a whole
    # kind's rows hunting for a rare state.
    rare_state = filters.explorer and filters.state not in ("", State.SUCCEEDED.value)
    if filters.kind:
        conditions.append((Operation.kind + "" if rare_state else Operation.kind) == filters.kind)
    if filters.name:
        conditions.append((Operation.name + "" if rare_state else Operation.name) == filters.name)
    if filters.fingerprint == NO_FINGERPRINT:
        conditions.append(Operation.error_fingerprint.is_(None))
    elif filters.fingerprint:
        conditions.append(Operation.error_fingerprint == filters.fingerprint)
    column = _time_column(filters)
    window = RANGES[filters.range]
    if filters.range == "today":
        conditions.append(column >= now.replace(hour=0, minute=0, second=0, microsecond=0))
    elif window is not None:
        conditions.append(column >= now - window)
    if filters.since:
        conditions.append(column >= filters.since)
    if filters.until:
        conditions.append(column <= filters.until)
    if filters.error_window_applies:
        conditions.append(column >= now - ERROR_SEARCH_WINDOW)
    if filters.q:
        conditions.append(search_condition(filters) if filters.explorer else _search(filters))
    return conditions


def _search(filters: Filters):
    """Text search over subject, idempotency key, error message and the customer's email.

    The customer's email matches an email's recipient, and any operation whose payload
    ``purchase_id`` or whose subject (``purchase:<id>``, ``customer:<id>``) names a purchase
    or customer with that email (Stripe webhooks, welcome emails). Over dead letters, when the
    text matches few of them and few customers, each of those is an index lookup
    (search_index.py); otherwise, and for the other statuses, each row selected is tested. When
    it matches many customers, a row is tested by looking up the purchase or customer it names
    (by primary key): a page of matches is then found without reading every customer's purchases,
    but a text many customers and few dead letters match tests every dead letter of the status.
    """
    pattern = _pattern(filters.q)
    own_text = search_index.dead_text_matches(pattern)
    customer_ids = search_index.customer_ids_matching(pattern)
    if not _few(customer_ids):
        # Most customers match: test the purchase or customer each row names by primary key
        # rather than build every matching customer's purchases, which are read before the
        # first row is tested; the newest-first walk then stops at a page of matches.
        return or_(*own_text, *search_index.named_customer_matches(pattern))
    customers = Customer.id.in_(customer_ids)
    # Compared as text: a payload's purchase_id is JSON (a number, or junk) and must never fail a cast.
    purchases_of_customer = (
        select(cast(Purchase.id, String)).join(Customer, Customer.id == Purchase.customer_id).where(customers)
    )
    # Webhooks and welcome emails name their purchase or customer in the subject instead.
    purchase_subjects = (
        select(literal("purchase:", String) + cast(Purchase.id, String))
        .join(Customer, Customer.id == Purchase.customer_id)
        .where(customers)
    )
    customer_subjects = select(literal("customer:", String) + cast(Customer.id, String)).where(customers)
    if filters.dead_only and _few(search_index.dead_candidates(pattern, DEAD)):
        # Few candidates: look each up (by id, subject, purchase) instead of testing every dead row.
        return Operation.id.in_(
            union_all(
                search_index.dead_ids_matching(pattern, DEAD),
                select(Operation.id).where(
                    search_index.probable(DEAD), Operation.subject.in_(union_all(purchase_subjects, customer_subjects))
                ),
                select(Operation.id).where(
                    search_index.probable(DEAD), search_index.dead_purchase_id().in_(purchases_of_customer)
                ),
            )
        )
    return or_(
        *own_text,
        cast(Operation.payload["purchase_id"].as_string(), String).in_(purchases_of_customer),
        Operation.subject.in_(purchase_subjects),
        Operation.subject.in_(customer_subjects),
    )


# Above this many dead letters (or customers) matching the text, the search tests the dead rows
# newest first instead (it stops at a page of matches, and so many matches fill one at once).
SEARCH_CANDIDATES = 1000


def _few(ids) -> bool:
    """Whether the SELECT of ids ``ids`` finds at most SEARCH_CANDIDATES rows (it stops reading there)."""
    found = db.session.execute(
        select(func.count()).select_from(ids.limit(SEARCH_CANDIDATES + 1).subquery())
    ).scalar_one()
    return found <= SEARCH_CANDIDATES


def search_kind(filters: Filters) -> str:
    """The kind of search the explorer runs for ``filters.q``: the chosen one, or a guess from the text."""
    if filters.search:
        return filters.search
    q = filters.q
    if q.startswith("evt_"):
        return "event"
    if "@" in q and " " not in q:
        return "customer"
    if q.isascii() and q.isdigit():
        return "purchase"  # or an operation id: see search_condition
    if ":" in q and " " not in q:
        return "subject_or_key"
    return "customer"  # a name


def search_condition(filters: Filters):
    """The explorer's search as one SQL condition on ``Operation``, built from indexed lookups.

    Customers and purchases are resolved first (unique or indexed lookups, bounded by
    MAX_CUSTOMERS and MAX_PURCHASES), then operations are found by subject (``customer:<id>``,
    ``purchase:<id>``, ``stripe:<session or payment intent>``, ``email:<address>``) on the
    subject index; event ids and keys hit the unique key index. Error text is the one
    substring search: it is bounded by filter_conditions (failed states, a time window).
    """
    q, kind = filters.q, search_kind(filters)
    if kind == "subject":
        return Operation.subject == q
    if kind == "key":
        return Operation.idempotency_key == q
    if kind == "subject_or_key":
        return or_(Operation.subject == q, Operation.idempotency_key == q)
    if kind == "event":
        if not q.startswith("evt_"):
            raise FilterError(f"a Stripe event id starts with evt_, got {q[:40]!r}")
        # The event's own processing and the refund notification it queues (their keys name it).
        return Operation.idempotency_key.in_([f"stripe-event:{q}", f"stripe-event:{q}:refund_notification"])
    if kind == "purchase":
        purchase_id = _purchase_id(q)
        subjects = _purchase_subjects(
            select(Purchase.id, Purchase.stripe_checkout_session_id, Purchase.stripe_payment_intent_id).where(
                Purchase.id == purchase_id
            )
        )
        if not filters.search:  # guessed from digits: an operation id is as likely
            return or_(Operation.id == purchase_id, Operation.subject.in_(subjects or [f"purchase:{purchase_id}"]))
        return Operation.subject.in_(subjects or [f"purchase:{purchase_id}"])
    if kind == "customer":
        subjects = _customer_subjects(q)
        return Operation.subject.in_(subjects) if subjects else false()
    # Error text: the one unindexed search (filter_conditions bounds the rows it reads).
    condition = func.lower(Operation.error_message).like(_pattern(q), escape="\\")
    return condition if filters.state else (DEAD & condition)


def _purchase_id(q: str) -> int:
    raw = q.removeprefix("purchase:").strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_ID:
        raise FilterError(f"a purchase id is a number (at most {MAX_ID}), got {q[:40]!r}")
    return int(raw)


def _pattern(q: str) -> str:
    """A LIKE pattern matching ``q`` anywhere, case-insensitively, its wildcards escaped."""
    return "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _customer_subjects(q: str) -> list[str]:
    """The subjects of a customer's operations, found by exact email (indexed), else by email or name text.

    The text search reads the customers table, not the operations table, and stops at MAX_CUSTOMERS.
    """
    addresses = list(dict.fromkeys((q, q.lower())))  # as typed, and as most addresses are stored
    found = db.session.execute(
        select(Customer.id, Customer.email).where(Customer.email.in_(addresses)).limit(MAX_CUSTOMERS)
    ).all()
    if not found:
        pattern = _pattern(q)
        matching = search_index.customer_ids_matching(pattern, names=True)
        # A rare text through the index; a common one (a surname) finds a page of the newest
        # customers at once, walking them newest first.
        text = or_(
            func.lower(Customer.name).like(pattern, escape="\\"),
            func.lower(Customer.email).like(pattern, escape="\\"),
        )
        found = db.session.execute(
            select(Customer.id, Customer.email)
            .where(Customer.id.in_(matching) if _few(matching) else text)
            .order_by(Customer.id.desc())
            .limit(MAX_CUSTOMERS)
        ).all()
    if not found:
        return []
    subjects = [subject for row in found for subject in (f"customer:{row.id}", f"email:{row.email}")]
    subjects += _purchase_subjects(
        select(Purchase.id, Purchase.stripe_checkout_session_id, Purchase.stripe_payment_intent_id)
        .where(Purchase.customer_id.in_([row.id for row in found]))
        .order_by(Purchase.created_at.desc())
        .limit(MAX_PURCHASES)
    )
    return subjects


def _purchase_subjects(query) -> list[str]:
    """``purchase:<id>`` and the Stripe subjects (``stripe:<session>``, ``stripe:<intent>``) of the purchases."""
    subjects = []
    for row in db.session.execute(query).all():
        subjects.append(f"purchase:{row.id}")
        subjects += [f"stripe:{value}" for value in row[1:] if value]
    return subjects


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
