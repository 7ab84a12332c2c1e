"""Customers and purchases for the console: search, one customer's story, one purchase's story.

Search is a case-insensitive *prefix* of the email or of the name, served by the expression
indexes ``lower(email)`` and ``lower(name)`` (``COLLATE "C"`` on PostgreSQL): each is a range
scan in index order that stops after one page, so it costs the same at a thousand customers or
ten million. Substrings in the middle of a name are not searched (no index could serve them
on both databases).

A customer's operations are found by subject (``customer:<id>``, ``email:<address>`` and
``purchase:<id>`` of their newest purchases, the ``ix_operations_subject`` index); emails by
those operations, Stripe events by the event ids their webhook operations carry and by the
purchases' Checkout Session and PaymentIntent ids. Everything is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload

from webapp.domain.text import text_problem
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer, EmailLog, Operation, Purchase, StripeEvent
from webapp.services.console.filters import MAX_ID, FilterError
from webapp.services.console.stripe_events import operations_for
from webapp.services.payments.purchases import PAID

MAX_QUERY = 200
# Bounds of one customer's page: their newest purchases, operations, emails, events, timeline.
MAX_PURCHASES = 100
MAX_OPERATIONS = 200
MAX_EMAILS = 200
MAX_EVENTS = 100
MAX_TIMELINE = 200
STATS_WINDOW = timedelta(days=7)
# The state groups of the per-customer delivery stats (seed 003's summary).
WAITING = ("scheduled", "pending", "running")


@dataclass
class CustomerPage:
    """Customers found (or the newest ones) and the cursor of the next page, if any."""

    rows: list
    next_cursor: str | None
    q: str
    more: bool = False  # a search found more than one page: refine it


@dataclass
class Entry:
    """One line of a timeline: when, what kind, a title, details, a link and a state."""

    at: datetime | None
    kind: str  # purchase | operation | email | stripe_event | credit
    title: str
    detail: str = ""
    href: str | None = None
    state: str | None = None


@dataclass
class CreditLine:
    """One change of a credit balance, derived from what is recorded (see :func:`credit_history`)."""

    at: datetime | None
    cents: int
    why: str
    purchase_id: int | None = None
    source: str = ""


@dataclass
class Story:
    """Everything the console shows about a customer or a purchase."""

    customer: Customer | None
    purchases: list = field(default_factory=list)
    operations: list = field(default_factory=list)
    emails: list = field(default_factory=list)
    events: list = field(default_factory=list)
    timeline: list = field(default_factory=list)
    credits: list = field(default_factory=list)
    unexplained_cents: int = 0
    stats: dict = field(default_factory=dict)
    truncated: bool = False


def check_query(raw: str | None) -> str:
    """The search text, stripped; FilterError when it is too long or cannot be stored."""
    q = (raw or "").strip()
    if len(q) > MAX_QUERY:
        raise FilterError(f"search text is limited to {MAX_QUERY} characters")
    if problem := text_problem(q):
        raise FilterError(f"search text {problem}")
    return q


def _lower(column):
    """``lower(column)`` as the index holds it (byte order on PostgreSQL, whatever the collation)."""
    expression = func.lower(column)
    return expression.collate("C") if db.session.get_bind().dialect.name == "postgresql" else expression


def _prefix(column, prefix: str) -> list:
    """A range on ``lower(column)`` holding exactly the values that start with ``prefix``."""
    expression = _lower(column)
    if ord(prefix[-1]) >= 0x10FFFF:  # no character sorts after it: the range is open-ended
        return [expression >= prefix]
    return [expression >= prefix, expression < prefix[:-1] + chr(ord(prefix[-1]) + 1)]


def prefix_query(prefix: str, limit: int, column=Customer.email):
    """Customers whose ``column`` starts with ``prefix`` (lower case), in index order."""
    return select(Customer).where(*_prefix(column, prefix)).order_by(_lower(column), Customer.id).limit(limit)


def search_customers(q: str = "", *, cursor: str | None = None, limit: int = 50) -> CustomerPage:
    """Customers whose email or name starts with ``q`` (any case), or the newest ones without ``q``.

    A search answers its first ``limit`` matches in email then name order (``more`` says there
    were others); the unfiltered list is keyset-paginated by id, newest first.
    """
    q = check_query(q)
    if not q:
        return _newest(cursor, limit)
    prefix = q.lower()
    found: dict[int, Customer] = {}
    more = False
    if prefix.lstrip("#").isascii() and prefix.lstrip("#").isdigit() and int(prefix.lstrip("#")) <= MAX_ID:
        customer = db.session.get(Customer, int(prefix.lstrip("#")))
        if customer is not None:
            found[customer.id] = customer
    columns = (Customer.email,) if "@" in prefix else (Customer.email, Customer.name)
    for column in columns:
        rows = db.session.execute(prefix_query(prefix, limit + 1, column)).scalars().all()
        more = more or len(rows) > limit
        for row in rows[:limit]:
            found.setdefault(row.id, row)
    rows = list(found.values())
    more = more or len(rows) > limit
    rows = rows[:limit]
    _detach(rows)
    return CustomerPage(rows, None, q, more)


def _newest(cursor: str | None, limit: int) -> CustomerPage:
    query = select(Customer)
    if cursor:
        if not (cursor.isascii() and cursor.isdigit() and int(cursor) <= MAX_ID):
            raise FilterError("the page cursor is malformed; start again from the first page")
        query = query.where(Customer.id < int(cursor))
    rows = db.session.execute(query.order_by(Customer.id.desc()).limit(limit + 1)).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    _detach(rows)
    return CustomerPage(rows, str(rows[-1].id) if more and rows else None, "")


def customer_story(customer_id: int, *, now: datetime | None = None) -> Story | None:
    """A customer's purchases, credit history, delivery stats and one timeline, or None."""
    now = now or utcnow()
    customer = db.session.get(Customer, customer_id, populate_existing=True)
    if customer is None:
        db.session.rollback()
        return None
    purchases = (
        db.session.execute(
            select(Purchase)
            .options(selectinload(Purchase.product))
            .where(Purchase.customer_id == customer_id)
            .order_by(Purchase.created_at.desc(), Purchase.id.desc())
            .limit(MAX_PURCHASES + 1)
        )
        .scalars()
        .all()
    )
    truncated = len(purchases) > MAX_PURCHASES
    purchases = purchases[:MAX_PURCHASES]
    subjects = [f"customer:{customer.id}", f"email:{customer.email}"] + [f"purchase:{p.id}" for p in purchases]
    story = _gather(customer, purchases, subjects, now)
    story.truncated = truncated
    story.credits, story.unexplained_cents = credit_history(customer, purchases, story.operations)
    story.timeline = _timeline(story)
    _finish(story)
    return story


def purchase_story(purchase_id: int, *, now: datetime | None = None) -> Story | None:
    """A purchase with its customer, operations, emails, Stripe events and timeline, or None."""
    now = now or utcnow()
    purchase = db.session.execute(
        select(Purchase).options(selectinload(Purchase.product)).where(Purchase.id == purchase_id)
    ).scalar_one_or_none()
    if purchase is None:
        db.session.rollback()
        return None
    customer = db.session.get(Customer, purchase.customer_id)
    story = _gather(customer, [purchase], [f"purchase:{purchase.id}"], now)
    story.timeline = _timeline(story)
    _finish(story)
    return story


def _gather(customer, purchases: list, subjects: list[str], now: datetime) -> Story:
    """The operations, emails, Stripe events and 7-day stats behind these subjects."""
    operations = (
        db.session.execute(
            select(Operation)
            .where(Operation.subject.in_(subjects))
            .order_by(Operation.created_at.desc(), Operation.id.desc())
            .limit(MAX_OPERATIONS)
        )
        .scalars()
        .all()
    )
    emails = []
    if operations:
        emails = (
            db.session.execute(
                select(EmailLog)
                .where(EmailLog.operation_id.in_([op.id for op in operations if op.kind == "email"]))
                .order_by(EmailLog.created_at.desc(), EmailLog.id.desc())
                .limit(MAX_EMAILS)
            )
            .scalars()
            .all()
        )
    event_ids = {
        op.payload.get("event_id")
        for op in operations
        if op.kind == "webhook" and isinstance(op.payload, dict) and isinstance(op.payload.get("event_id"), str)
    }
    object_ids = {
        value for p in purchases for value in (p.stripe_checkout_session_id, p.stripe_payment_intent_id) if value
    }
    events = []
    if event_ids or object_ids:
        events = (
            db.session.execute(
                select(StripeEvent)
                .where(or_(StripeEvent.id.in_(event_ids), StripeEvent.object_id.in_(object_ids)))
                .order_by(StripeEvent.received_at.desc(), StripeEvent.id.desc())
                .limit(MAX_EVENTS)
            )
            .scalars()
            .all()
        )
    links = operations_for([event.id for event in events])
    for event in events:
        event.caused = links.get(event.id, [])
    return Story(
        customer=customer,
        purchases=list(purchases),
        operations=list(operations),
        emails=list(emails),
        events=list(events),
        stats=delivery_stats(subjects, now),
    )


def delivery_stats(subjects: list[str], now: datetime) -> dict:
    """Seed 003's per-account view over 7 days: per kind, totals by outcome, success rate, average attempts."""
    rows = db.session.execute(
        select(Operation.kind, Operation.state, func.count(), func.sum(Operation.attempts))
        .where(Operation.subject.in_(subjects), Operation.created_at >= now - STATS_WINDOW)
        .group_by(Operation.kind, Operation.state)
    ).all()
    stats: dict[str, dict] = {}
    for kind, state, count, attempts in rows:
        entry = stats.setdefault(
            kind, {"total": 0, "succeeded": 0, "retrying": 0, "dead": 0, "waiting": 0, "cancelled": 0, "attempts": 0}
        )
        entry["total"] += count
        entry["attempts"] += int(attempts or 0)
        key = "waiting" if state in WAITING else state
        entry[key] = entry.get(key, 0) + count
    for entry in stats.values():
        finished = entry["succeeded"] + entry["dead"]
        entry["success_rate"] = round(100 * entry["succeeded"] / finished, 2) if finished else None
        entry["avg_attempts"] = round(entry["attempts"] / entry["total"], 2) if entry["total"] else None
        del entry["attempts"]
    return {"window": "7d", "by_kind": stats}


def credit_history(customer: Customer, purchases: list, operations: list) -> tuple[list[CreditLine], int]:
    """The balance's changes as the records tell them, newest first, and what they leave unexplained.

    There is no ledger table: credits change in three places (services/payments/purchases.py),
    each leaving a record read here. A credit pack's completion grants the credits its
    confirmation email recorded (else the catalogue's current grant, said so); a purchase paid
    with credits spends its price; a pack's refund removes what its refund email recorded.
    ``unexplained`` is the balance minus their sum (credits set by hand, history beyond the
    bound of purchases shown).
    """
    lines: list[CreditLine] = []
    confirmations = {}
    refunds = []
    for op in operations:
        payload = op.payload if isinstance(op.payload, dict) else {}
        context = payload.get("context") if isinstance(payload.get("context"), dict) else {}
        if payload.get("template") == "credit_purchase_confirmation":
            confirmations[payload.get("purchase_id")] = context.get("credits_granted")
        elif payload.get("template") == "refund_notification" and isinstance(context.get("credits_removed"), int):
            refunds.append((op, payload.get("purchase_id"), context["credits_removed"]))
    for purchase in purchases:
        if purchase.status not in PAID:
            continue
        if purchase.payment_method == "credits":
            lines.append(
                CreditLine(purchase.completed_at, -purchase.amount_cents, "paid with credits", purchase.id, "purchase")
            )
        product = purchase.product
        if product is not None and product.kind == "credits":
            granted = confirmations.get(purchase.id)
            source = "confirmation email"
            if not isinstance(granted, int):
                granted, source = product.credit_cents_granted, "catalogue (current grant)"
            if granted:
                lines.append(CreditLine(purchase.completed_at, granted, "credit pack bought", purchase.id, source))
    for op, purchase_id, removed in refunds:
        if removed:
            lines.append(CreditLine(op.created_at, -removed, "credit pack refunded", purchase_id, "refund email"))
    lines.sort(key=lambda line: line.at or datetime.min, reverse=True)
    return lines, customer.credit_balance_cents - sum(line.cents for line in lines)


def _timeline(story: Story) -> list[Entry]:
    """Purchases, operations, emails, Stripe events and credit changes, newest first, bounded."""
    entries: list[Entry] = []
    for p in story.purchases:
        name = p.product.name if p.product else f"product {p.product_id}"
        entries.append(
            Entry(p.created_at, "purchase", f"Purchase #{p.id} created", name, f"/admin/purchases/{p.id}", p.status)
        )
        if p.completed_at:
            entries.append(Entry(p.completed_at, "purchase", f"Purchase #{p.id} completed", name, None, "completed"))
        if p.refunded_at:
            entries.append(
                Entry(
                    p.refunded_at, "purchase", f"Purchase #{p.id} refunded", f"{p.refunded_cents} cents", None, p.status
                )
            )
    for op in story.operations:
        detail = f"{op.attempts}/{op.max_attempts} attempts"
        if op.error_message and op.state in ("dead", "retrying"):
            detail += f" · {op.error_message[:160]}"
        entries.append(
            Entry(op.created_at, "operation", f"{op.name} #{op.id}", detail, f"/admin/operations/{op.id}", op.state)
        )
    for email in story.emails:
        via = f"via {email.provider}" if email.provider else ""
        detail = email.provider_message_id or email.error or ""
        entries.append(
            Entry(
                email.created_at,
                "email",
                f"{email.template} to {email.to_address} {via}".strip(),
                detail,
                f"/admin/operations/{email.operation_id}",
                email.status,
            )
        )
    for event in story.events:
        entries.append(
            Entry(
                event.received_at,
                "stripe_event",
                f"{event.type} {event.id}",
                event.object_id or "",
                f"/admin/stripe-events/{event.id}",
                event.processing_state,
            )
        )
    for line in story.credits:
        sign = "+" if line.cents > 0 else ""
        entries.append(
            Entry(line.at, "credit", f"{sign}{line.cents} credit cents", f"{line.why} (from the {line.source})")
        )
    entries.sort(key=lambda entry: entry.at or datetime.min, reverse=True)
    return entries[:MAX_TIMELINE]


def _finish(story: Story) -> None:
    """Detach everything the page reads and end the read transaction."""
    rows = [story.customer, *story.purchases, *story.operations, *story.emails, *story.events]
    rows += [p.product for p in story.purchases if p.product is not None]
    for row in rows:
        if row is not None and row in db.session:
            db.session.expunge(row)
    db.session.rollback()


def _detach(rows) -> None:
    for row in rows:
        if row in db.session:
            db.session.expunge(row)
    db.session.rollback()
