"""The periodic checks that raise threshold alerts, and the daily health report.

Every check turns a measurement into a level (``None`` when healthy) and hands it to
:func:`alerts.evaluate_threshold`, which alerts on crossings and recoveries only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, select

from webapp.domain.fingerprints import fingerprint_of, normalise_error
from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import Alert, AutoRequeue, Operation, PeriodicJob
from webapp.services.engine import periodic
from webapp.services.engine.doorbell import get_doorbell
from webapp.services.engine.periodic import Heartbeat, periodic_job
from webapp.services.monitoring import alerts, backlog, hourly

CHECKS_JOB = "checks"
DAILY_REPORT_JOB = "daily_report"
RATE_KINDS = {
    "email": ("Email delivery rate", "ALERT_EMAIL_RATE"),
    "webhook": ("Webhook success rate", "ALERT_WEBHOOK_RATE"),
}
TOP_FAILURES = 5
REPORT_SCAN_LIMIT = 5000


def level_above(value: float, warning: float, critical: float) -> str | None:
    """critical / warning when ``value`` is above the limits, else None."""
    return "critical" if value > critical else "warning" if value > warning else None


def level_below(value: float, warning: float, critical: float) -> str | None:
    """critical / warning when ``value`` is below the limits, else None."""
    return "critical" if value < critical else "warning" if value < warning else None


def limits(warning: str, critical: str, *, below: bool = False) -> tuple[dict, str]:
    """An alert's ``warning`` / ``critical`` context entries ("> 100") and its message's words
    ("warning above 100, critical above 500"), from the limits as they are to be shown."""
    sign, word = ("<", "below") if below else (">", "above")
    entries = {"warning": f"{sign} {warning}", "critical": f"{sign} {critical}"}
    return entries, f"warning {word} {warning}, critical {word} {critical}"


def unresolved_dead_letters(*, include_alerts: bool = True) -> int:
    """Dead operations nobody has resolved yet (without dead ``alert`` deliveries if asked)."""
    conditions = [Operation.state == State.DEAD.value, Operation.resolved_at.is_(None)]
    if not include_alerts:
        conditions.append(Operation.kind != "alert")
    return db.session.execute(select(func.count()).select_from(Operation).where(*conditions)).scalar_one()


def terminal_counts(kind: str, since: datetime) -> tuple[int, int]:
    """``(succeeded, dead)`` for operations of ``kind`` that finished since ``since``."""
    succeeded = db.session.execute(
        select(func.count()).select_from(Operation).where(Operation.kind == kind, Operation.succeeded_at >= since)
    ).scalar_one()
    dead = db.session.execute(
        select(func.count()).select_from(Operation).where(Operation.kind == kind, Operation.dead_at >= since)
    ).scalar_one()
    return succeeded, dead


def check_dead_letters(now: datetime, config: Mapping):
    """dlq_threshold: unresolved dead letters above the warning / critical counts.

    Dead ``alert`` deliveries are not counted: a failing alert never raises another alert,
    not even by piling up (Slack down for an afternoon). They stay listed as dead letters.
    """
    count = unresolved_dead_letters(include_alerts=False)
    warning, critical = config["ALERT_DLQ_WARNING"], config["ALERT_DLQ_CRITICAL"]
    entries, words = limits(warning, critical)
    context = {"value": count, **entries, "admin_url": alerts.admin_url(status="unresolved")}
    return alerts.evaluate_threshold(
        "dlq_threshold",
        "unresolved",
        level_above(count, warning, critical),
        value=count,
        now=now,
        title=f"{count} unresolved dead letters",
        context=context,
        message=f"The dead-letter queue holds {count} unresolved operations ({words}).",
    )


def check_failure_rate(kind: str, now: datetime, config: Mapping):
    """failure_rate: the kind's success rate over the window below its warning / critical rate.

    Fewer finished operations than ``ALERT_FAILURE_RATE_MIN_SAMPLE`` count as healthy: a rate
    over three emails says nothing, and an alert must be able to recover once a bad hour ends.
    """
    label, prefix = RATE_KINDS[kind]
    window = config["ALERT_FAILURE_RATE_WINDOW_SECONDS"]
    succeeded, dead = terminal_counts(kind, now - timedelta(seconds=window))
    total = succeeded + dead
    rate = 100.0 * succeeded / total if total else 100.0
    warning, critical = config[f"{prefix}_WARNING"], config[f"{prefix}_CRITICAL"]
    level = level_below(rate, warning, critical) if total >= config["ALERT_FAILURE_RATE_MIN_SAMPLE"] else None
    entries, words = limits(f"{warning}%", f"{critical}%", below=True)
    context = {
        "value": f"{rate:.1f}%",
        "sample": f"{succeeded} ok, {dead} dead",
        "window": f"{window / 60:.0f} min",
        **entries,
        "admin_url": alerts.admin_url(kind=kind, status="all", range="1h"),
    }
    return alerts.evaluate_threshold(
        "failure_rate",
        kind,
        level,
        value=round(rate, 2),
        now=now,
        context=context,
        title=f"{label} {rate:.1f}% over the last {window / 60:.0f} min",
        message=f"{label}: {succeeded} succeeded and {dead} dead-lettered in the window ({words}).",
    )


def check_jobs(now: datetime, config: Mapping, *, skip: str | None = CHECKS_JOB) -> list:
    """job_stale for each periodic job whose heartbeat is stale; system_health for failing runs.

    Judged exactly as ``/healthz`` judges it (:func:`periodic.heartbeats`): every registered
    job, including one that never finished a run and so has no heartbeat at all.
    """
    raised = []
    for beat in periodic.heartbeats(now, config):
        if beat.name == skip:
            continue  # this very job is running, so it is not stale
        raised.append(_job_stale(beat, now))
        raised.append(_job_failed(beat, now))
    return raised


def _job_stale(beat: Heartbeat, now: datetime):
    name, age, limit = beat.name, beat.heartbeat_age_seconds, beat.stale_after_seconds
    context = {
        "job": name,
        "heartbeat_age_seconds": None if age is None else round(age),
        "stale_after_seconds": round(limit),
        "admin_url": alerts.admin_url("/admin/operations-health"),
    }
    return alerts.evaluate_threshold(
        "job_stale",
        name,
        None if beat.fresh else "critical",
        value=age,
        now=now,
        context=context,
        title=f"Periodic job {name} has never finished a run"
        if age is None
        else f"Periodic job {name} has not run for {_ago(age)}",
        message=f"Job {name} runs every {beat.interval_seconds:.0f} s; its heartbeat is stale after "
        f"{limit:.0f} s. Is a worker with the scheduler running?",
    )


def _job_failed(beat: Heartbeat, now: datetime):
    name, error = beat.name, beat.last_error
    return alerts.evaluate_threshold(
        "system_health",
        f"job_failed:{name}",
        "error" if error else None,
        now=now,
        context={"job": name, "error": (error or "")[:500], "admin_url": alerts.admin_url("/admin/operations-health")},
        title=f"Periodic job {name} failed its last run",
        message=f"Job {name}: {(error or 'its last run succeeded')[:500]}",
    )


def check_queue(now: datetime):
    """system_health: the queue (Huey's storage) cannot be reached, so nothing is rung."""
    try:
        get_doorbell().depth()
        error = None
    except Exception as exc:  # unreachable queue: a measurement, not a failed check
        error = type(exc).__name__
    return alerts.evaluate_threshold(
        "system_health",
        "queue",
        "critical" if error else None,
        now=now,
        context={"error": error, "admin_url": alerts.admin_url("/admin/operations-health")},
        title="The queue is unreachable",
        message=f"Ringing the queue fails ({error}); the reconciler keeps "
        "operations due, but nothing runs until the queue is back.",
    )


def check_queue_depth(now: datetime, config: Mapping):
    """backlog/queue_depth: due operations waiting above the warning / critical counts (seed 003: 100).

    Counted only up to one past the critical count: enough to decide the level, bounded at any backlog.
    """
    warning, critical = config["ALERT_QUEUE_DEPTH_WARNING"], config["ALERT_QUEUE_DEPTH_CRITICAL"]
    count = backlog.due_count(now, max(warning, critical) + 1)
    shown = f"more than {critical}" if count > critical else str(count)
    entries, words = limits(warning, critical)
    context = {"value": shown, **entries, "admin_url": alerts.admin_url(status="due")}
    return alerts.evaluate_threshold(
        "backlog",
        "queue_depth",
        level_above(count, warning, critical),
        value=count,
        now=now,
        context=context,
        title=f"{shown} operations due and waiting",
        message=f"{shown} operations are past their time and not yet picked up ({words}). Are enough workers running?",
    )


def check_oldest_due(now: datetime, config: Mapping):
    """backlog/oldest_due_age: the oldest due operation has waited longer than the warning / critical age."""
    oldest = backlog.oldest_due(now)
    age = 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
    warning, critical = config["ALERT_OLDEST_DUE_AGE_WARNING"], config["ALERT_OLDEST_DUE_AGE_CRITICAL"]
    entries, words = limits(f"{warning:.0f} s", f"{critical:.0f} s")
    context = {"value": f"{age:.0f} s", **entries, "admin_url": alerts.admin_url(status="due")}
    return alerts.evaluate_threshold(
        "backlog",
        "oldest_due_age",
        level_above(age, warning, critical),
        value=round(age, 1),
        now=now,
        context=context,
        title=f"The oldest due operation has waited {_ago(age)}",
        message=f"An operation has been due for {age:.0f} s without being picked up ({words}).",
    )


def check_attempts(now: datetime, config: Mapping):
    """attempts/average: operations finished in the window needed more attempts on average than allowed.

    Like the rates: fewer finished operations than ``ALERT_FAILURE_RATE_MIN_SAMPLE`` say nothing.
    Alert deliveries are not counted (a failing channel must not alert about itself).
    """
    window = config["ALERT_FAILURE_RATE_WINDOW_SECONDS"]
    finished, attempts = backlog.recent_attempts(now - timedelta(seconds=window))
    average = attempts / finished if finished else 0.0
    warning, critical = config["ALERT_AVG_ATTEMPTS_WARNING"], config["ALERT_AVG_ATTEMPTS_CRITICAL"]
    enough = finished >= config["ALERT_FAILURE_RATE_MIN_SAMPLE"]
    entries, words = limits(warning, critical)
    context = {
        "value": f"{average:.2f}",
        "sample": f"{finished} finished",
        "window": f"{window / 60:.0f} min",
        **entries,
        "admin_url": alerts.admin_url(status="recovered", range="1h"),
    }
    return alerts.evaluate_threshold(
        "attempts",
        "average",
        level_above(average, warning, critical) if enough else None,
        value=round(average, 2),
        now=now,
        context=context,
        title=f"Operations needed {average:.2f} attempts on average over the last {window / 60:.0f} min",
        message=f"{finished} operations finished with {attempts} attempts in all ({words}): "
        "something downstream is failing and being retried.",
    )


def _refresh_rollups(now: datetime) -> list:
    """Rebuild the due hours of the health page's roll-ups; raises no alert."""
    hourly.refresh(now)
    return []


def _ago(age: float) -> str:
    return f"{age / 3600:.1f} h" if age >= 3600 else f"{age / 60:.0f} min" if age >= 60 else f"{age:.0f} s"


# Last in every tick, so the job checks see this tick's heartbeats.
@periodic_job(CHECKS_JOB, interval="CHECKS_INTERVAL_SECONDS", lease="CHECKS_LEASE_SECONDS", order=40)
def run_checks(now: datetime, config: Mapping) -> str:
    """One pass of every check, each in its own short transaction; returns a summary."""
    raised = []
    steps = [
        lambda: [check_dead_letters(now, config)],
        *[(lambda kind=kind: [check_failure_rate(kind, now, config)]) for kind in RATE_KINDS],
        lambda: check_jobs(now, config),
        lambda: [check_queue(now)],
        lambda: [check_queue_depth(now, config), check_oldest_due(now, config)],
        lambda: [check_attempts(now, config)],
        # Not a check: the health page's hour roll-ups ride on this minute-by-minute job.
        lambda: _refresh_rollups(now),
    ]
    for step in steps:
        try:
            raised.extend(alert for alert in step() if alert is not None)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
    return f"alerts={len(raised)}" + (f" ({', '.join(f'{a.type}:{a.key}' for a in raised)})" if raised else "")


# --- the daily report ---------------------------------------------------------------------------


def daily_report(now: datetime, config: Mapping) -> dict:
    """The last 24 hours: counts and rates per kind, dead letters, auto-requeues, top failures."""
    since = now - timedelta(hours=24)
    created = dict(
        db.session.execute(
            select(Operation.kind, func.count()).where(Operation.created_at >= since).group_by(Operation.kind)
        ).all()
    )
    kinds = {}
    for kind in ("email", "webhook", "job", "alert"):
        succeeded, dead = terminal_counts(kind, since)
        total = succeeded + dead
        kinds[kind] = {
            "created": created.get(kind, 0),
            "succeeded": succeeded,
            "dead": dead,
            "rate": round(100.0 * succeeded / total, 2) if total else None,
        }
    requeued = db.session.execute(
        select(func.count()).select_from(AutoRequeue).where(AutoRequeue.requeued_at >= since)
    ).scalar_one()
    failures = db.session.execute(
        select(Operation.name, Operation.error_class, Operation.error_message)
        .where(Operation.dead_at >= since)
        .order_by(Operation.dead_at.desc())
        .limit(REPORT_SCAN_LIMIT)
    ).all()
    groups: Counter = Counter()
    samples: dict[str, tuple[str, str | None, str]] = {}
    for name, error_class, message in failures:
        fingerprint = fingerprint_of(error_class, message)
        groups[fingerprint] += 1
        samples.setdefault(fingerprint, (name, error_class, normalise_error(message)))
    top = [
        {
            "fingerprint": fingerprint,
            "count": count,
            "name": samples[fingerprint][0],
            "error_class": samples[fingerprint][1],
            "sample": samples[fingerprint][2],
        }
        for fingerprint, count in groups.most_common(TOP_FAILURES)
    ]
    report = {
        "since": since.isoformat(),
        "until": now.isoformat(),
        "kinds": kinds,
        "unresolved_dead_letters": unresolved_dead_letters(),
        "auto_requeued": requeued,
        "top_failures": top,
    }
    db.session.rollback()
    return report


def _report_level(report: dict, config: Mapping) -> str:
    for kind, (_, prefix) in RATE_KINDS.items():
        rate = report["kinds"][kind]["rate"]
        if rate is not None and rate < config[f"{prefix}_WARNING"]:
            return "warning"
    return "warning" if report["unresolved_dead_letters"] > config["ALERT_DLQ_WARNING"] else "info"


def _rate_text(entry: dict) -> str:
    rate = "n/a" if entry["rate"] is None else f"{entry['rate']:.1f}%"
    return f"{entry['succeeded']} ok, {entry['dead']} dead ({rate}); {entry['created']} created"


def send_daily_report(now: datetime, config: Mapping):
    """Record the daily report as a ``daily_report`` alert (one per UTC day) and deliver it. Commits.

    Returns ``None`` when today's report already exists.
    """
    day = now.date().isoformat()
    exists = db.session.execute(select(Alert.id).where(Alert.type == "daily_report", Alert.key == day)).first()
    db.session.rollback()
    if exists:
        return None
    report = daily_report(now, config)
    lines = [f"{kind}: {_rate_text(entry)}" for kind, entry in report["kinds"].items()]
    lines.append(
        f"Unresolved dead letters: {report['unresolved_dead_letters']}; auto-requeued: {report['auto_requeued']}"
    )
    lines += [
        f"Top failure #{i}: {item['count']}× {item['name']} {item['error_class'] or ''}: {item['sample'][:150]}"
        for i, item in enumerate(report["top_failures"], 1)
    ]
    context = {
        "emails": _rate_text(report["kinds"]["email"]),
        "webhooks": _rate_text(report["kinds"]["webhook"]),
        "dead letters": report["unresolved_dead_letters"],
        "report": report,
        "admin_url": alerts.admin_url("/admin/operations-health", window="24h"),
    }
    alert = alerts.raise_alert(
        "daily_report",
        _report_level(report, config),
        day,
        f"Daily health report for the 24 h to {now:%Y-%m-%d %H:%M} UTC",
        "\n".join(lines),
        context,
        now=now,
    )
    db.session.commit()
    return alert


@periodic_job(DAILY_REPORT_JOB, interval="DAILY_REPORT_INTERVAL_SECONDS", lease="DAILY_REPORT_LEASE_SECONDS", order=30)
def daily_report_job(now: datetime, config: Mapping) -> str:
    """The periodic daily-report job; its very first run only starts the clock (no day to report yet)."""
    first = (
        db.session.execute(select(PeriodicJob.last_finished_at).where(PeriodicJob.name == DAILY_REPORT_JOB)).scalar()
        is None
    )
    db.session.rollback()
    if first:
        return "first run: the first report comes one interval from now"
    alert = send_daily_report(now, config)
    return "already reported today" if alert is None else f"alert={alert.id}"
