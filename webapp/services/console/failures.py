"""Failure lists: keyset-paginated operations, their details with related records, and the dead-letter stats.

Every read ends its transaction, because on SQLite each transaction holds the write lock workers need.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, text

from webapp.domain.states import State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.models.email import EmailLog
from webapp.models.payments import Customer, Purchase
from webapp.services.console.filters import (
    DEAD,
    MAX_ID,
    FilterError,
    Filters,
    descending,
    filter_conditions,
    sort_column,
)
from webapp.services.engine.registry import KINDS


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

    Dead operations come newest death first; live ones (retrying, scheduled) soonest due first;
    the explorer's newest created first.
    """
    column = sort_column(filters)
    rows = (
        db.session.execute(
            page_query(filters, cursor=cursor, limit=limit, now=now).execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    _detach(rows)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(getattr(rows[-1], column.key), rows[-1].id) if more and rows else None
    return Page(rows, next_cursor, filters)


def page_query(filters: Filters, *, cursor: str | None = None, limit: int = 50, now: datetime | None = None):
    """The SELECT of one page (``limit`` + 1 rows, to know whether another follows) after ``cursor``."""
    column = sort_column(filters)
    query = select(Operation).where(*filter_conditions(filters, now))
    after = decode_cursor(cursor)
    if after is not None:
        stamp, last_id = after
        if descending(filters):
            query = query.where(or_(column < stamp, and_(column == stamp, Operation.id < last_id)))
            if filters.explorer:
                # Implied by the line above, but a plain range SQLite's planner can start the walk from
                # (an OR alone makes it read every newer row first, or sort the whole window).
                query = query.where(column <= stamp)
        else:
            query = query.where(or_(column > stamp, and_(column == stamp, Operation.id > last_id)))
    order = (column.desc(), Operation.id.desc()) if descending(filters) else (column.asc(), Operation.id.asc())
    return query.order_by(*order).limit(limit + 1)


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


def dead_letter_stats(now: datetime | None = None) -> dict:
    """The failed-operations cards: dead total, by kind, unresolved, new in the last 24 h."""
    now = now or utcnow()
    dead = Operation.state == State.DEAD.value
    # One count per kind, each a seek of the partial (kind, dead_at) index over dead rows only
    # (``state = 'dead'`` spelled as a literal so SQLite can use it, with or without ANALYZE):
    # grouping by kind made SQLite read every dead row from the table via the state index
    # (0.3 s at 30,000 dead letters). Kinds are validated at creation, so KINDS covers them all.
    counts = db.session.execute(_dead_by_kind_statement(db.session.get_bind().dialect.name)).one()
    by_kind = dict(zip(KINDS, counts, strict=True))
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


def _dead_by_kind_statement(dialect: str):
    """One count per kind of dead operations, each a seek of the partial dead-only (kind, dead_at) index.

    SQLite (without statistics) would rather walk every dead row through the (state, created_at,
    id) index the explorer pages with, so there the index is named with INDEXED BY, which
    SQLAlchemy cannot emit."""
    if dialect == "sqlite":
        counts = ", ".join(
            f"(SELECT count(*) FROM operations INDEXED BY ix_operations_dead_kind_dead_at"
            f" WHERE state = 'dead' AND kind = :kind_{index})"
            for index in range(len(KINDS))
        )
        return text(f"SELECT {counts}").bindparams(**{f"kind_{index}": kind for index, kind in enumerate(KINDS)})
    return select(*[select(func.count()).where(DEAD, Operation.kind == kind).scalar_subquery() for kind in KINDS])


def operation_names() -> list[str]:
    """Names of operations that exist, for the name filter."""
    # A loose index scan: one seek of the (name, state) index per distinct name, where SELECT
    # DISTINCT walks every entry (a million at a million operations) on SQLite.
    names = (
        db.session.execute(
            text(
                "WITH RECURSIVE names(name) AS ("
                " SELECT min(name) FROM operations"
                " UNION ALL"
                " SELECT (SELECT min(name) FROM operations WHERE operations.name > names.name)"
                " FROM names WHERE names.name IS NOT NULL"
                ") SELECT name FROM names WHERE name IS NOT NULL"
            )
        )
        .scalars()
        .all()
    )
    db.session.rollback()
    return list(names)
