"""The operations-health numbers: windowed rates, queue state, breakdowns, trend, heartbeats.

Every metric is defined in docs/metrics.md (numerator, denominator, window). The windowed
counts read the terminal timestamps (``succeeded_at``, ``dead_at``) through the
``(kind, <timestamp>)`` indexes, asking for every kind by name so the index is usable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, literal_column, or_, select

from webapp.domain.states import State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.services.engine import periodic
from webapp.services.engine.doorbell import get_doorbell
from webapp.services.engine.reconciler import JOB_NAME as RECONCILER
from webapp.services.engine.registry import KINDS

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
FAILED_OUTCOMES = ("failed", "dead", "crashed")

LABELS = {
    "email_delivery_rate": "Email delivery rate",
    "webhook_success_rate": "Webhook success rate",
    "dlq_unresolved": "Unresolved dead letters",
    "retry_success_rate": "Retry success rate",
    "avg_time_to_success": "Avg time to success (retried)",
    "queue_depth": "Queue depth",
    "oldest_due_age": "Oldest due operation",
    "throughput": "Throughput",
}


class WindowError(ValueError):
    """An unknown window name."""


def window_delta(window: str) -> timedelta:
    """The length of a window name (1h, 24h, 7d)."""
    try:
        return WINDOWS[window]
    except KeyError:
        raise WindowError(f"window must be one of {', '.join(WINDOWS)}") from None


@dataclass
class Metric:
    """One card: its value, unit, colour and where to look when it is bad."""

    key: str
    value: float | None
    unit: str
    status: str  # green, amber, red, none
    detail: str
    link: dict | None = None

    @property
    def label(self) -> str:
        """The card's title."""
        return LABELS[self.key]


def grade(key: str, value: float | None, thresholds: dict) -> str:
    """green / amber / red against ``thresholds[key] = (direction, warn, crit)``; none without data."""
    if value is None:
        return "none"
    if key not in thresholds:
        return "green"
    direction, warn, crit = thresholds[key]
    if direction == "min":
        return "red" if value < crit else "amber" if value < warn else "green"
    return "red" if value > crit else "amber" if value > warn else "green"


def _seconds_between(later, earlier):
    """Dialect-aware ``later - earlier`` in seconds, as a SQL expression."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _hour_bucket(column):
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.date_trunc("hour", column), "YYYY-MM-DD HH24:00")
    return func.strftime("%Y-%m-%d %H:00", column)


def _terminal_counts(since: datetime, extra=()) -> tuple[dict, dict]:
    """Succeeded and dead counts per kind with the terminal time inside the window."""
    succeeded = dict(
        db.session.execute(
            select(Operation.kind, func.count())
            .where(Operation.kind.in_(KINDS), Operation.succeeded_at >= since, *extra)
            .group_by(Operation.kind)
        ).all()
    )
    dead = dict(
        db.session.execute(
            select(Operation.kind, func.count())
            .where(Operation.kind.in_(KINDS), Operation.dead_at >= since, *extra)
            .group_by(Operation.kind)
        ).all()
    )
    return succeeded, dead


def _rate(ok: int, bad: int) -> float | None:
    return None if ok + bad == 0 else round(100.0 * ok / (ok + bad), 2)


def health_metrics(window: str, thresholds: dict, now: datetime | None = None) -> list[Metric]:
    """The eight cards for ``window``, graded against ``thresholds``."""
    now = now or utcnow()
    delta = window_delta(window)
    since = now - delta
    succeeded, dead = _terminal_counts(since)
    retried_ok, retried_dead = _terminal_counts(since, extra=(Operation.attempts > 1,))
    avg_seconds = db.session.execute(
        select(
            func.avg(_seconds_between(Operation.succeeded_at, func.coalesce(Operation.run_at, Operation.created_at)))
        ).where(Operation.kind.in_(KINDS), Operation.succeeded_at >= since, Operation.attempts > 1)
    ).scalar()
    unresolved = db.session.execute(
        select(func.count())
        .select_from(Operation)
        .where(Operation.state == State.DEAD.value, Operation.resolved_at.is_(None))
    ).scalar_one()
    oldest_due = db.session.execute(
        select(func.min(Operation.next_attempt_at)).where(
            Operation.state.in_([State.PENDING.value, State.RETRYING.value, State.SCHEDULED.value]),
            Operation.next_attempt_at <= now,
        )
    ).scalar()
    db.session.rollback()
    depth = queue_depth()
    values = {
        "email_delivery_rate": (
            _rate(succeeded.get("email", 0), dead.get("email", 0)),
            "%",
            f"{succeeded.get('email', 0)} sent, {dead.get('email', 0)} dead-lettered",
        ),
        "webhook_success_rate": (
            _rate(succeeded.get("webhook", 0), dead.get("webhook", 0)),
            "%",
            f"{succeeded.get('webhook', 0)} processed, {dead.get('webhook', 0)} dead-lettered",
        ),
        "dlq_unresolved": (float(unresolved), "", "dead, not yet resolved (all time)"),
        "retry_success_rate": (
            _rate(sum(retried_ok.values()), sum(retried_dead.values())),
            "%",
            f"{sum(retried_ok.values())} recovered, {sum(retried_dead.values())} dead after retries",
        ),
        "avg_time_to_success": (
            None if avg_seconds is None else round(float(avg_seconds), 1),
            "s",
            "first due to success, retried operations",
        ),
        "queue_depth": (
            None if depth is None else float(depth["pending"] + depth["scheduled"]),
            "",
            "queue unreachable"
            if depth is None
            else f"{depth['pending']} pending, {depth['scheduled']} scheduled in Huey",
        ),
        "oldest_due_age": (
            0.0 if oldest_due is None else round(max((now - oldest_due).total_seconds(), 0.0), 1),
            "s",
            "due and not yet picked up" if oldest_due else "nothing waiting",
        ),
        "throughput": (
            round((sum(succeeded.values()) + sum(dead.values())) / (delta.total_seconds() / 3600), 2),
            "/h",
            f"{sum(succeeded.values()) + sum(dead.values())} finished in {window}",
        ),
    }
    return [
        Metric(
            key,
            value,
            unit,
            grade(key, value, thresholds) if key != "queue_depth" or value is not None else "red",
            detail,
            _link(key, window),
        )
        for key, (value, unit, detail) in values.items()
    ]


def _link(key: str, window: str) -> dict | None:
    """The failed-operations filter that explains a bad value."""
    range_ = window if window in ("1h", "24h", "7d") else "all"
    return {
        "email_delivery_rate": {"kind": "email", "status": "all", "range": range_},
        "webhook_success_rate": {"kind": "webhook", "status": "all", "range": range_},
        "dlq_unresolved": {"status": "unresolved"},
        "retry_success_rate": {"status": "all", "range": range_},
        "avg_time_to_success": {"status": "retrying"},
        "queue_depth": {"status": "retrying"},
        "oldest_due_age": {"status": "retrying"},
    }.get(key)


def queue_depth() -> dict | None:
    """Huey's pending and scheduled counts, or None when the queue cannot be reached."""
    try:
        return get_doorbell().depth()
    except Exception:  # an unreachable queue is shown on the card, never a 500
        return None


def critical(metrics: list[Metric]) -> list[Metric]:
    """The metrics in the red, for the banner."""
    return [metric for metric in metrics if metric.status == "red"]


def breakdown(window: str, now: datetime | None = None) -> list[dict]:
    """Per operation name, for operations created in the window: totals like seed 003's stats."""
    now = now or utcnow()
    since = now - window_delta(window)
    failed = or_(Operation.attempts > 1, Operation.state.in_([State.RETRYING.value, State.DEAD.value]))
    # GROUP BY expressions (not bare columns) keep SQLite on the created_at range index
    # instead of walking the whole (name, state) index to avoid a sort.
    name, kind = func.coalesce(Operation.name, "").label("name"), func.coalesce(Operation.kind, "").label("kind")
    rows = db.session.execute(
        select(
            name,
            kind,
            func.count().label("total"),
            func.sum(case((Operation.state == State.SUCCEEDED.value, 1), else_=0)).label("succeeded"),
            func.sum(case((failed, 1), else_=0)).label("failed"),
            func.sum(case((Operation.state == State.DEAD.value, 1), else_=0)).label("dead"),
            func.avg(Operation.attempts).label("avg_attempts"),
        )
        .where(Operation.created_at >= since)
        .group_by(name, kind)
        .order_by(name)
    ).all()
    db.session.rollback()
    return [
        {
            "name": row.name,
            "kind": row.kind,
            "total": row.total,
            "succeeded": int(row.succeeded or 0),
            "failed": int(row.failed or 0),
            "dead": int(row.dead or 0),
            "avg_attempts": round(float(row.avg_attempts or 0), 2),
            "success_rate": round(100.0 * int(row.succeeded or 0) / row.total, 2) if row.total else None,
        }
        for row in rows
    ]


def trend(window: str, now: datetime | None = None) -> dict:
    """Successful and failed attempts per hour over the window (every hour present, oldest first)."""
    now = now or utcnow()
    since = now - window_delta(window)
    bucket = _hour_bucket(OperationAttempt.started_at).label("hour")
    failed = OperationAttempt.outcome.in_(FAILED_OUTCOMES)
    rows = db.session.execute(
        select(
            bucket,
            func.sum(case((OperationAttempt.outcome == "succeeded", 1), else_=0)),
            func.sum(case((failed, 1), else_=0)),
        )
        .where(OperationAttempt.started_at >= since)
        .group_by(literal_column("hour"))
    ).all()
    db.session.rollback()
    counts = {hour: (int(ok or 0), int(bad or 0)) for hour, ok, bad in rows}
    labels, successes, failures = [], [], []
    hour = since.replace(minute=0, second=0, microsecond=0)
    while hour <= now:
        key = hour.strftime("%Y-%m-%d %H:00")
        ok, bad = counts.get(key, (0, 0))
        labels.append(key)
        successes.append(ok)
        failures.append(bad)
        hour += timedelta(hours=1)
    return {"labels": labels, "successes": successes, "failures": failures}


def heartbeats(now: datetime, config: Mapping) -> list[periodic.Heartbeat]:
    """Each periodic job's heartbeat by name, judged exactly as /healthz, /metrics and ``job_stale`` judge it."""
    return sorted(periodic.heartbeats(now, config), key=lambda beat: beat.name)


def queue_health(now: datetime, config: Mapping) -> dict:
    """Seed 003's queue-health view, from the operations table and Huey."""
    by_state = dict(db.session.execute(select(Operation.state, func.count()).group_by(Operation.state)).all())
    db.session.rollback()
    depth = queue_depth()
    finished = by_state.get("succeeded", 0) + by_state.get("dead", 0)
    waiting = sum(by_state.get(state, 0) for state in ("pending", "retrying", "scheduled"))
    return {
        "healthy": depth is not None
        and not any(beat.stale for beat in heartbeats(now, config) if beat.name == RECONCILER),
        "metrics": {state.value: by_state.get(state.value, 0) for state in State},
        "queue": depth,
        "stats": {
            "waiting": waiting,
            "failure_rate": _rate(by_state.get("dead", 0), by_state.get("succeeded", 0)),
            "finished": finished,
        },
        "timestamp": now.isoformat() + "Z",
    }


def delivery_stats(window: str, now: datetime | None = None) -> dict:
    """Seed 003's delivery stats for a range: a summary and the same per name."""
    rows = breakdown(window, now)
    total = sum(row["total"] for row in rows)
    succeeded = sum(row["succeeded"] for row in rows)
    attempts = sum(row["avg_attempts"] * row["total"] for row in rows)
    return {
        "range": window,
        "summary": {
            "total": total,
            "succeeded": succeeded,
            "failed": sum(row["failed"] for row in rows),
            "dead": sum(row["dead"] for row in rows),
            "success_rate": round(100.0 * succeeded / total, 2) if total else None,
            "avg_attempts": round(attempts / total, 2) if total else None,
        },
        "by_name": {row["name"]: row for row in rows},
    }
