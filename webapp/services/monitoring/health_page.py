"""The operations-health numbers: windowed rates, queue state, breakdowns, trend, heartbeats.

Every metric is defined in docs/metrics.md (numerator, denominator, window). The windowed
counts (terminal timestamps for the cards, creation time for the breakdown, attempt starts for
the trend) come from the hour roll-ups for the window's whole hours and live queries for its
edges (``hourly.py``); :func:`as_of` says when the stored part was built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, literal_column, select

from webapp.domain.states import State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.services.engine import consumers as consumer_beats
from webapp.services.engine import periodic
from webapp.services.engine.doorbell import get_doorbell
from webapp.services.engine.reconciler import JOB_NAME as RECONCILER
from webapp.services.engine.registry import KINDS
from webapp.services.monitoring import backlog, hourly
from webapp.services.monitoring.backlog import ATTEMPT_KINDS

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
    "avg_attempts": "Avg attempts",
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


def _hour_bucket(column):
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.date_trunc("hour", column), "YYYY-MM-DD HH24:00")
    return func.strftime("%Y-%m-%d %H:00", column)


def _kind_sums(totals: dict, counter: str) -> dict[str, float]:
    """``counter`` summed per kind over a :func:`hourly.window_totals` result."""
    sums: dict[str, float] = {}
    for (kind, _name), counters in totals.items():
        if kind in KINDS:
            sums[kind] = sums.get(kind, 0) + counters[counter]
    return sums


def _avg_attempts(totals: dict) -> float | None:
    """Average attempts per operation finished in the window, alert deliveries excluded (as the alert does)."""
    succeeded, dead = _kind_sums(totals, "succeeded"), _kind_sums(totals, "dead")
    attempts = _kind_sums(totals, "finished_attempts")
    finished = sum(succeeded.get(kind, 0) + dead.get(kind, 0) for kind in ATTEMPT_KINDS)
    return round(sum(attempts.get(kind, 0) for kind in ATTEMPT_KINDS) / finished, 2) if finished else None


def _rate(ok: int, bad: int) -> float | None:
    return None if ok + bad == 0 else round(100.0 * ok / (ok + bad), 2)


def window_counts(window: str, now: datetime) -> tuple[dict, datetime | None]:
    """The window's counters and when their stored part was built (None: counted live).

    Whole hours from the roll-ups, the window's edges live (hourly.py). One page reads them once
    and passes them to :func:`health_metrics` and :func:`breakdown` (each reads them itself
    when called alone).
    """
    counts = hourly.window_totals(now - window_delta(window), now)
    db.session.rollback()
    return counts


def health_metrics(
    window: str, thresholds: dict, now: datetime | None = None, totals: dict | None = None
) -> list[Metric]:
    """The nine cards for ``window``, graded against ``thresholds`` (``totals``: its :func:`window_counts`)."""
    now = now or utcnow()
    delta = window_delta(window)
    if totals is None:
        totals, _as_of = window_counts(window, now)
    succeeded, dead = _kind_sums(totals, "succeeded"), _kind_sums(totals, "dead")
    retried_ok, retried_dead = _kind_sums(totals, "succeeded_retried"), _kind_sums(totals, "dead_retried")
    retried_seconds = sum(_kind_sums(totals, "retried_success_seconds").values())
    avg_seconds = retried_seconds / sum(retried_ok.values()) if sum(retried_ok.values()) else None
    unresolved = db.session.execute(
        select(func.count())
        .select_from(Operation)
        .where(Operation.state == State.DEAD.value, Operation.resolved_at.is_(None))
    ).scalar_one()
    oldest_due = backlog.oldest_due(now)
    due_cap = due_count_cap(thresholds)
    due = backlog.due_count(now, due_cap)
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
            "latest (re)queue to success, retried operations",
        ),
        "queue_depth": (
            float(due),
            "",
            ("at least " if due >= due_cap else "")
            + f"{due} due and waiting; "
            + (
                "queue unreachable"
                if depth is None
                else f"Huey: {depth['pending']} pending, {depth['scheduled']} scheduled"
            ),
        ),
        "oldest_due_age": (
            0.0 if oldest_due is None else round(max((now - oldest_due).total_seconds(), 0.0), 1),
            "s",
            "due and not yet picked up" if oldest_due else "nothing waiting",
        ),
        "avg_attempts": (
            _avg_attempts(totals),
            "",
            "per operation finished in the window (alert deliveries excluded)",
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
            "red" if key == "queue_depth" and depth is None else grade(key, value, thresholds),
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
        "avg_time_to_success": {"status": "recovered", "range": range_},
        "queue_depth": {"status": "due"},
        "oldest_due_age": {"status": "due"},
        "avg_attempts": {"status": "recovered", "range": range_},
    }.get(key)


def due_count_cap(thresholds: dict) -> int:
    """How far the due count is counted: ten times the critical depth (so the count stays bounded)."""
    return max(int(thresholds.get("queue_depth", ("max", 0, 1000))[2]) * 10, 1000)


def queue_depth() -> dict | None:
    """Huey's pending and scheduled counts, or None when the queue cannot be reached."""
    try:
        return get_doorbell().depth()
    except Exception:  # an unreachable queue is shown on the card, never a 500
        return None


def critical(metrics: list[Metric]) -> list[Metric]:
    """The metrics in the red, for the banner."""
    return [metric for metric in metrics if metric.status == "red"]


def as_of(window: str, now: datetime | None = None) -> datetime | None:
    """When the roll-ups behind ``window``'s numbers were built (None: counted live, or fresh)."""
    now = now or utcnow()
    moment = hourly.stored_as_of(now - window_delta(window), now)
    db.session.rollback()
    return moment


def breakdown(window: str, now: datetime | None = None, totals: dict | None = None) -> list[dict]:
    """Per operation name, for operations created in the window: totals like seed 003's stats
    (``totals``: the window's :func:`window_counts`, read here when not given)."""
    if totals is None:
        totals, _as_of = window_counts(window, now or utcnow())
    rows = sorted(
        ((name, kind, counters) for (kind, name), counters in totals.items() if counters["created"]),
        key=lambda row: (row[0], row[1]),
    )
    return [
        {
            "name": name,
            "kind": kind,
            "total": counters["created"],
            "succeeded": int(counters["created_succeeded"]),
            "failed": int(counters["created_failed"]),
            "dead": int(counters["created_dead"]),
            "avg_attempts": round(counters["created_attempts"] / counters["created"], 2),
            "success_rate": round(100.0 * counters["created_succeeded"] / counters["created"], 2),
        }
        for name, kind, counters in rows
    ]


def trend(window: str, now: datetime | None = None) -> dict:
    """Successful and failed attempts per hour over the window (every hour present, oldest first)."""
    now = now or utcnow()
    since = now - window_delta(window)
    stored = hourly.trend_counts(since, now)
    if stored is not None:
        counts = {hour.strftime("%Y-%m-%d %H:00"): value for hour, value in stored[0].items()}
    else:
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
        counts = {hour: (int(ok or 0), int(bad or 0)) for hour, ok, bad in rows}
    db.session.rollback()
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


def consumers(now: datetime, config: Mapping) -> list[consumer_beats.Consumer]:
    """Consumer processes, live first, then lost, then stopped (one read of the small ``consumers`` table)."""
    return consumer_beats.list_consumers(now, config)


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
