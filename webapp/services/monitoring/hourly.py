"""Hour roll-ups of the health page's counts: rebuilt by the checks job, read with the live edges.

A window ``[since, now)`` is answered as the stored hours that lie wholly inside it plus two
live queries over its ragged edges (the part of the first hour after ``since``, and the current
hour), so the page reads a few thousand roll-up rows and at most two hours of operations
whatever the table's size. Every hour's row is exactly :func:`aggregate` over that hour, the
same function the edges use: a rebuilt hour equals a direct count.

The counts by creation hour follow each operation's *current* state, which can change after
the hour was built (a retry succeeding late, an admin retry); :func:`refresh` rebuilds the
newest hours every run and the stalest few, so every hour is rebuilt within a bounded lag,
and :func:`window_totals` returns the oldest ``computed_at`` it used for the page to show.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.orm import aliased

from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, OperationHourRollup
from webapp.services.engine.registry import KINDS

HOUR = timedelta(hours=1)
# The longest window the page shows, plus the hour ``since`` falls in.
KEPT = timedelta(days=7) + HOUR
# Per refresh: the newest hours (where late outcomes land) and the stalest of the rest.
RECENT_HOURS = 3
STALE_HOURS_PER_RUN = 12
# Missing hours built per run, newest first (a new install, or after downtime): the page counts
# the window live until every hour of it is stored.
MISSING_HOURS_PER_RUN = 24
ATTEMPTS_KEY = ("*", "*")
FAILED_OUTCOMES = ("failed", "dead", "crashed")
COUNTERS = (
    "created",
    "created_succeeded",
    "created_failed",
    "created_dead",
    "created_attempts",
    "succeeded",
    "succeeded_retried",
    "retried_success_seconds",
    "dead",
    "dead_retried",
    "attempts_succeeded",
    "attempts_failed",
    "finished_attempts",
)


def hour_floor(moment: datetime) -> datetime:
    """The start of the hour ``moment`` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def seconds_between(later, earlier):
    """Dialect-aware ``later - earlier`` in seconds, as a SQL expression."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def latest_queued():
    """When an operation was last (re)queued, as a SQL expression correlated to ``Operation``.

    A dead letter retried by a person or by auto-requeue runs at once, so the start of its first
    attempt after its last dead-lettered one is when it was requeued; an operation that never
    died was queued when it became due (``run_at``) or was created.
    """
    died, after = aliased(OperationAttempt), aliased(OperationAttempt)
    last_death = (
        select(func.max(died.number))
        .where(died.operation_id == Operation.id, died.outcome == "dead")
        .correlate(Operation)
        .scalar_subquery()
    )
    requeued = (
        select(func.min(after.started_at))
        .where(after.operation_id == Operation.id, after.number > last_death)
        .correlate(Operation)
        .scalar_subquery()
    )
    return func.coalesce(requeued, Operation.run_at, Operation.created_at)


def _count_if(condition):
    return func.sum(case((condition, 1), else_=0))


def _between(column, start: datetime, end: datetime | None) -> tuple:
    return (column >= start,) if end is None else (column >= start, column < end)


def aggregate(start: datetime, end: datetime | None) -> dict[tuple[str, str], dict[str, float]]:
    """Every counter over ``[start, end)`` (``end`` None: no upper bound), straight from the
    operations: ``{(kind, name): counters}``."""
    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    failed = (Operation.attempts > 1) | Operation.state.in_([State.RETRYING.value, State.DEAD.value])
    # GROUP BY expressions (not bare columns) keep SQLite on the created_at covering index
    # instead of walking the whole (name, state) index to avoid a sort.
    name, kind = func.coalesce(Operation.name, ""), func.coalesce(Operation.kind, "")
    for row_kind, row_name, *values in db.session.execute(
        select(
            kind,
            name,
            func.count(),
            _count_if(Operation.state == State.SUCCEEDED.value),
            _count_if(failed),
            _count_if(Operation.state == State.DEAD.value),
            func.sum(Operation.attempts),
        )
        .where(*_between(Operation.created_at, start, end))
        .group_by(kind, name)
    ):
        row = totals[(row_kind, row_name)]
        for key, value in zip(COUNTERS[:5], values, strict=True):
            row[key] = int(value or 0)
    retried = Operation.attempts > 1
    for row_kind, row_name, count, retried_count, seconds, attempts in db.session.execute(
        select(
            Operation.kind,
            Operation.name,
            func.count(),
            _count_if(retried),
            # CASE evaluates the correlated look-up for retried rows only.
            func.sum(case((retried, seconds_between(Operation.succeeded_at, latest_queued())), else_=None)),
            func.sum(Operation.attempts),
        )
        .where(Operation.kind.in_(KINDS), *_between(Operation.succeeded_at, start, end))
        .group_by(Operation.kind, Operation.name)
    ):
        row = totals[(row_kind, row_name)]
        row.update(succeeded=int(count), succeeded_retried=int(retried_count or 0))
        row["retried_success_seconds"] = float(seconds or 0.0)
        row["finished_attempts"] += int(attempts or 0)
    for row_kind, row_name, count, retried_count, attempts in db.session.execute(
        select(Operation.kind, Operation.name, func.count(), _count_if(retried), func.sum(Operation.attempts))
        .where(Operation.kind.in_(KINDS), *_between(Operation.dead_at, start, end))
        .group_by(Operation.kind, Operation.name)
    ):
        row = totals[(row_kind, row_name)]
        row.update(dead=int(count), dead_retried=int(retried_count or 0))
        row["finished_attempts"] += int(attempts or 0)
    ok, bad = _attempt_counts(start, end)
    if ok or bad:
        totals[ATTEMPTS_KEY].update(attempts_succeeded=ok, attempts_failed=bad)
    return dict(totals)


def rebuild_hour(hour: datetime, now: datetime) -> None:
    """Replace one hour's rows with :func:`aggregate` over it (in the caller's transaction)."""
    db.session.execute(delete(OperationHourRollup).where(OperationHourRollup.hour == hour))
    rows = [
        {"hour": hour, "kind": kind, "name": name, "computed_at": now, **counters}
        for (kind, name), counters in sorted(aggregate(hour, hour + HOUR).items())
    ]
    # An hour with nothing in it still gets a row, so "built" and "empty" differ from "missing".
    rows = rows or [{"hour": hour, "kind": "", "name": "", "computed_at": now, **dict.fromkeys(COUNTERS, 0)}]
    db.session.execute(insert(OperationHourRollup), rows)


def hours_to_rebuild(now: datetime) -> list[datetime]:
    """Up to a day of missing hours of the kept span, the newest finished hours, and the stalest
    of the rest: a bounded amount of work per run."""
    last = hour_floor(now) - HOUR
    first = hour_floor(now - KEPT)
    wanted = [first + HOUR * n for n in range(int((last - first) / HOUR) + 1)]
    built = dict(
        db.session.execute(
            select(OperationHourRollup.hour, func.min(OperationHourRollup.computed_at))
            .where(OperationHourRollup.hour >= first)
            .group_by(OperationHourRollup.hour)
        ).all()
    )
    missing = [hour for hour in reversed(wanted) if hour not in built][:MISSING_HOURS_PER_RUN]
    recent = [hour for hour in wanted[-RECENT_HOURS:] if hour in built]
    stalest = sorted((hour for hour in wanted if hour in built and hour not in recent), key=built.get)
    return missing + recent + stalest[:STALE_HOURS_PER_RUN]


def refresh(now: datetime) -> int:
    """One step of the checks job: rebuild the due hours, drop hours older than the kept span; commits."""
    hours = hours_to_rebuild(now)
    for hour in hours:
        rebuild_hour(hour, now)
    db.session.execute(delete(OperationHourRollup).where(OperationHourRollup.hour < hour_floor(now - KEPT)))
    db.session.commit()
    return len(hours)


def _stored(start: datetime, end: datetime) -> dict:
    """Sums of the stored hours in ``[start, end)``, by ``(kind, name)``."""
    columns = [func.sum(getattr(OperationHourRollup, counter)) for counter in COUNTERS]
    return {
        (kind, name): {counter: _number(counter, value) for counter, value in zip(COUNTERS, values, strict=True)}
        for kind, name, *values in db.session.execute(
            select(OperationHourRollup.kind, OperationHourRollup.name, *columns)
            .where(OperationHourRollup.hour >= start, OperationHourRollup.hour < end)
            .group_by(OperationHourRollup.kind, OperationHourRollup.name)
        )
        if kind or name
    }


def _number(counter: str, value) -> float | int:
    """A stored sum as Python number (PostgreSQL's SUM of a bigint is a Decimal)."""
    return float(value or 0) if counter == "retried_success_seconds" else int(value or 0)


def _add(into: dict, more: dict) -> None:
    for key, counters in more.items():
        row = into.setdefault(key, dict.fromkeys(COUNTERS, 0))
        for counter, value in counters.items():
            row[counter] += value


def stored_span(since: datetime, now: datetime) -> tuple[datetime, datetime, datetime] | None:
    """The stored whole hours of the window as ``(first, end, as_of)``, or None (count it live).

    The stored hours must run unbroken from the window's first whole hour; the newest may be
    missing (the hour that just ended, until the next checks-job run): those are counted live
    with the current hour, and ``as_of`` shows how far behind the job is.
    """
    first = hour_floor(since) + (HOUR if since != hour_floor(since) else timedelta(0))
    hours, newest, as_of = db.session.execute(
        select(
            func.count(func.distinct(OperationHourRollup.hour)),
            func.max(OperationHourRollup.hour),
            func.min(OperationHourRollup.computed_at),
        ).where(OperationHourRollup.hour >= first, OperationHourRollup.hour < hour_floor(now))
    ).one()
    if not hours or hours != int((newest + HOUR - first) / HOUR):
        return None
    return first, newest + HOUR, as_of


def window_totals(since: datetime, now: datetime) -> tuple[dict[tuple[str, str], dict[str, float]], datetime | None]:
    """Every counter from ``since`` on and how fresh the stored part is (None: all live)."""
    span = stored_span(since, now)
    if span is None:
        return aggregate(since, None), None
    first, end, as_of = span
    totals = _stored(first, end)
    if since < first:
        _add(totals, aggregate(since, first))
    _add(totals, aggregate(end, None))
    return totals, as_of


def trend_counts(since: datetime, now: datetime) -> tuple[dict[datetime, tuple[int, int]], datetime | None] | None:
    """Attempts succeeded and failed per hour over ``[since, now)`` and the stored part's freshness;
    None when nothing of the window is stored (the caller counts live)."""
    span = stored_span(since, now)
    if span is None:
        return None
    first, end, as_of = span
    counts = {
        hour: (int(ok), int(bad))
        for hour, ok, bad in db.session.execute(
            select(
                OperationHourRollup.hour, OperationHourRollup.attempts_succeeded, OperationHourRollup.attempts_failed
            ).where(
                OperationHourRollup.hour >= first,
                OperationHourRollup.hour < end,
                OperationHourRollup.kind == ATTEMPTS_KEY[0],
                OperationHourRollup.name == ATTEMPTS_KEY[1],
            )
        )
    }
    if since < first:
        counts[hour_floor(since)] = _attempt_counts(since, first)
    hour = end
    while hour <= hour_floor(now):
        counts[hour] = _attempt_counts(hour, hour + HOUR if hour < hour_floor(now) else None)
        hour += HOUR
    return counts, as_of


def _attempt_counts(start: datetime, end: datetime | None) -> tuple[int, int]:
    ok, bad = db.session.execute(
        select(
            _count_if(OperationAttempt.outcome == "succeeded"),
            _count_if(OperationAttempt.outcome.in_(FAILED_OUTCOMES)),
        ).where(*_between(OperationAttempt.started_at, start, end))
    ).one()
    return int(ok or 0), int(bad or 0)


def stored_as_of(since: datetime, now: datetime) -> datetime | None:
    """When the oldest stored hour of the window was built; None when the window is counted live."""
    span = stored_span(since, now)
    return None if span is None else span[2]
