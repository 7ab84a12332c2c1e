"""Backlog measurements shared by the health cards and the backlog alerts, each bounded at any table size.

What each costs (``operations`` at 1M rows, indexes named in docs/metrics.md):

- :func:`due_count`: one range scan of ``(state, next_attempt_at)`` per waiting state, stopped
  after ``cap`` matching rows (``LIMIT`` inside the count): at most ``cap`` rows (plus the due
  alert deliveries among them, a handful) looked up for their kind, never the whole table.
- :func:`oldest_due`: per waiting state, ``(state, next_attempt_at)`` walked in order up to the
  first row that is not an alert delivery (``ORDER BY next_attempt_at LIMIT 1``): O(log n) plus
  the due alert deliveries ahead of it.

Each is one statement (a ``UNION ALL`` of the per-state reads): the health page and its cards,
refreshed every 10 s, make one round trip for each, not three.

Alert deliveries (kind ``alert``) are left out of every measure here: a channel that is slow or
down must not raise a backlog or attempts alert about itself, to be delivered through itself.
- :func:`recent_attempts`: per kind and terminal time, the newest ``limit`` entries of
  ``(kind, succeeded_at, attempts)`` / ``(kind, dead_at, attempts)`` inside the window, read from
  the index alone (it covers ``attempts``): at most ``2 × kinds × limit`` index entries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, union_all

from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import Operation

WAITING = (State.PENDING.value, State.RETRYING.value, State.SCHEDULED.value)
# Kinds whose attempts say something about the system (alert deliveries are left out).
ATTEMPT_KINDS = ("email", "webhook", "job")
ATTEMPTS_SAMPLE_LIMIT = 5000


def _waiting_due(state: str, now: datetime):
    """Operations in ``state`` due by ``now``, alert deliveries left out (the filter is on the row)."""
    return (Operation.state == state, Operation.next_attempt_at <= now, Operation.kind != "alert")


def due_count_query(state: str, now: datetime, cap: int):
    """The count of ``state``'s due operations, stopped at ``cap`` (walks ``(state, next_attempt_at)``)."""
    rows = select(Operation.id).where(*_waiting_due(state, now)).limit(cap).subquery()
    return select(func.count()).select_from(rows)


def oldest_due_query(state: str, now: datetime):
    """The earliest due time in ``state`` (the first matching entry of ``(state, next_attempt_at)``)."""
    return (
        select(Operation.next_attempt_at).where(*_waiting_due(state, now)).order_by(Operation.next_attempt_at).limit(1)
    )


def recent_attempts_query(since: datetime, limit: int = ATTEMPTS_SAMPLE_LIMIT):
    """``count, sum(attempts)`` over the newest ``limit`` finished operations per kind and end (indexes only)."""
    parts = [
        select(Operation.attempts.label("attempts"))
        .where(Operation.kind == kind, column >= since)
        .order_by(column.desc())
        .limit(limit)
        for kind in ATTEMPT_KINDS
        for column in (Operation.succeeded_at, Operation.dead_at)
    ]
    rows = union_all(*[part.subquery().select() for part in parts]).subquery()
    return select(func.count(), func.coalesce(func.sum(rows.c.attempts), 0))


def all_due_count_query(now: datetime, cap: int):
    """:func:`due_count_query` of every waiting state in one statement, stopped at ``cap`` in all."""
    arms = [select(Operation.id).where(*_waiting_due(state, now)).limit(cap).subquery().select() for state in WAITING]
    return select(func.count()).select_from(union_all(*arms).limit(cap).subquery())


def all_oldest_due_query(now: datetime):
    """:func:`oldest_due_query` of every waiting state in one statement: the earliest of their first entries."""
    arms = [oldest_due_query(state, now).subquery().select() for state in WAITING]
    rows = union_all(*arms).subquery()
    return select(func.min(rows.c.next_attempt_at))


def due_count(now: datetime, cap: int) -> int:
    """Operations waiting past their time (pending, retrying or scheduled, due by ``now``), up to ``cap``."""
    return db.session.execute(all_due_count_query(now, cap)).scalar_one()


def oldest_due(now: datetime) -> datetime | None:
    """The earliest ``next_attempt_at`` among waiting operations (not alert deliveries) due by ``now``."""
    return db.session.execute(all_oldest_due_query(now)).scalar()


def recent_attempts(since: datetime, limit: int = ATTEMPTS_SAMPLE_LIMIT) -> tuple[int, int]:
    """``(operations, attempts)`` over the newest operations that finished since ``since`` (alerts excluded)."""
    count, total = db.session.execute(recent_attempts_query(since, limit)).one()
    return int(count), int(total)
