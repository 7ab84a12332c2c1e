"""Alerts: every alert is a database row plus an ``alert.slack`` operation that delivers it
(and, when configured, ``alert.email`` and ``alert.webhook`` ones: see :mod:`channels`).

An alert is written in the caller's transaction together with its delivery operation, so
a dead-lettered email and the alert about it commit together. Delivery is an ordinary
operation (kind ``alert``, 2 retries): when Slack is down the alert retries and, if it
dies, it is only dead-lettered: an alert operation never raises another alert.

No floods: the same type and key alert at most once per ``ALERT_DEDUPE_SECONDS``; threshold
alerts (:func:`evaluate_threshold`) fire when a threshold is crossed and once more when it
recovers, remembering the last state per key in ``alert_states``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from urllib.parse import urlencode

from flask import current_app
from sqlalchemy import select

from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.retry import RetryPolicy
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Alert, AlertState, Operation
from webapp.models.monitoring import ALERT_LEVELS, ALERT_TYPES
from webapp.services.engine.operations import create_operation
from webapp.services.engine.registry import handler
from webapp.services.engine.runner import on_outcome
from webapp.services.monitoring import channels

log = logging.getLogger("backstop.alerts")

DELIVERY_OPERATION = "alert.slack"
LEVEL_RANK = {level: rank for rank, level in enumerate(ALERT_LEVELS)}
# Slack shows the emoji in the text and the colour as the attachment's side bar.
LEVEL_STYLE = {
    "info": (":large_blue_circle:", "#2f80ed"),
    "warning": (":large_yellow_circle:", "#f2c94c"),
    "error": (":red_circle:", "#eb5757"),
    "critical": (":rotating_light:", "#9b51e0"),
}
# Dead-lettered operations of these kinds raise an alert; "alert" is deliberately absent.
FAILURE_ALERTS = {"email": ("email_failure", "error"), "webhook": ("webhook_failure", "critical")}
FIELD_LABELS = {
    "operation_id": "Operation",
    "operation_name": "Name",
    "subject": "Subject",
    "attempts": "Attempts",
    "error": "Error",
    "value": "Value",
    "warning": "Warning at",
    "critical": "Critical at",
    "window": "Window",
    "sample": "Sample",
    "job": "Job",
    "heartbeat_age_seconds": "Heartbeat age (s)",
    "stale_after_seconds": "Stale after (s)",
}
LINK_KEYS = ("admin_url", "details_url")
MAX_MESSAGE = 4000
MAX_SLACK_TEXT = 2900  # Slack refuses section text above 3000 characters
MAX_FIELDS = 10  # Slack's limit per section


class AlertError(ValueError):
    """An alert with an unknown type or level."""


def admin_url(path: str = "/admin/failed-operations", **query) -> str:
    """An absolute link into the admin console (``PUBLIC_BASE_URL`` + path + query)."""
    base = current_app.config["PUBLIC_BASE_URL"]
    query = {key: value for key, value in query.items() if value not in (None, "")}
    return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")


def raise_alert(
    type_: str,
    level: str,
    key: str,
    title: str,
    message: str = "",
    context: dict | None = None,
    *,
    state: str | None = None,
    now: datetime | None = None,
    dedupe: bool = True,
) -> Alert | None:
    """Record an alert and its delivery operation in the caller's transaction (the caller commits).

    Returns ``None`` when the same type and key already alerted within the dedupe window.
    """
    if type_ not in ALERT_TYPES:
        raise AlertError(f"unknown alert type {type_!r}")
    if level not in LEVEL_RANK:
        raise AlertError(f"unknown alert level {level!r}")
    now = now or utcnow()
    key = key[:255]
    if dedupe and _alerted_since(type_, key, now - _dedupe_window()):
        log.info("alert %s %s suppressed: already alerted within the window", type_, key)
        return None
    alert = Alert(
        type=type_,
        level=level,
        key=key,
        title=title[:255],
        message=(message or "")[:MAX_MESSAGE],
        context=context or {},
        state=state,
        created_at=now,
    )
    db.session.add(alert)
    db.session.flush()
    operation = create_operation(
        DELIVERY_OPERATION,
        {"alert_id": alert.id},
        idempotency_key=f"alert:{alert.id}",
        subject=f"alert:{type_}:{key}"[:255],
        now=now,
    )
    alert.operation_id = operation.id
    channels.enqueue_deliveries(alert, now)
    log.info(
        "alert %s %s %s: %s",
        alert.id,
        type_,
        level,
        title,
        extra={"alert_id": alert.id, "alert_type": type_, "level": level},
    )
    return alert


def _dedupe_window() -> timedelta:
    return timedelta(seconds=current_app.config["ALERT_DEDUPE_SECONDS"])


def _alerted_since(
    type_: str, key: str, since: datetime, min_rank: int | None = None, state: str | None = None
) -> bool:
    query = select(Alert.level).where(Alert.type == type_, Alert.key == key, Alert.created_at > since)
    if state is not None:
        query = query.where(Alert.state == state)
    levels = db.session.execute(query).scalars().all()
    return any(min_rank is None or LEVEL_RANK[level] >= min_rank for level in levels)


def evaluate_threshold(
    type_: str,
    key: str,
    level: str | None,
    *,
    title: str,
    message: str = "",
    context: dict | None = None,
    value: float | None = None,
    now: datetime | None = None,
) -> Alert | None:
    """Compare a threshold's new ``level`` (``None`` = healthy) with its last state; alert on crossings.

    Newly firing or escalated: alert (unless an alert as severe fired for this key within the
    dedupe window, which absorbs flapping). Back to healthy after an announced firing: one
    ``recovered`` alert. De-escalation and steady states are silent. Caller commits.
    """
    now = now or utcnow()
    row = db.session.get(AlertState, (type_, key))
    if row is None:
        row = AlertState(type=type_, key=key, state="ok", announced=False, changed_at=now)
        db.session.add(row)
    row.value = value
    firing = row.state == "firing"
    if level is None:
        if not firing:
            return None
        announced = row.announced
        row.state, row.level, row.announced, row.changed_at = "ok", None, False, now
        if not announced:
            return None
        return raise_alert(
            type_, "info", key, f"Recovered: {title}", message, context, state="recovered", now=now, dedupe=False
        )
    if firing and LEVEL_RANK[row.level or "info"] >= LEVEL_RANK[level]:
        row.level = level  # steady, or calmer: no news
        return None
    row.state, row.level, row.changed_at = "firing", level, now
    window = now - _dedupe_window()
    if _alerted_since(type_, key, window, min_rank=LEVEL_RANK[level], state="firing"):
        return None
    alert = raise_alert(type_, level, key, title, message, context, state="firing", now=now, dedupe=False)
    row.announced = True
    return alert


def threshold_states() -> list[AlertState]:
    """Every threshold's last known state (detached)."""
    rows = db.session.execute(select(AlertState).order_by(AlertState.type, AlertState.key)).scalars().all()
    for row in rows:
        db.session.expunge(row)
    db.session.rollback()
    return rows


def recent_alerts(limit: int = 20) -> list[Alert]:
    """The latest alerts, newest first (detached rows: type, level, title, message, context, ...)."""
    rows = (
        db.session.execute(select(Alert).order_by(Alert.created_at.desc(), Alert.id.desc()).limit(max(int(limit), 0)))
        .scalars()
        .all()
    )
    for row in rows:
        db.session.expunge(row)
    db.session.rollback()  # a read only: never keep a (SQLite: write-locking) transaction open
    return rows


# --- dead-lettered operations ------------------------------------------------------------------


@on_outcome(outcomes=("dead",), kinds=tuple(FAILURE_ALERTS))
def alert_on_dead_letter(operation: Operation, outcome: str) -> None:
    """Outcome listener: an email or webhook operation reaching ``dead`` raises its alert.

    Runs inside the outcome's transaction, so the alert commits with the dead-letter. An
    ``alert`` operation dying raises nothing: alerts cannot loop.
    """
    type_, level = FAILURE_ALERTS[operation.kind]
    fingerprint = fingerprint_of(operation.error_class, operation.error_message)
    error = f"{operation.error_class or 'Error'}: {operation.error_message or ''}".strip()
    context = {
        "operation_id": operation.id,
        "operation_name": operation.name,
        "subject": operation.subject,
        "attempts": operation.attempts,
        "error": error[:500],
        "error_kind": operation.error_kind,
        "fingerprint": fingerprint,
        "admin_url": admin_url(kind=operation.kind, name=operation.name, fingerprint=fingerprint, status="unresolved"),
        # This very operation (payload, error, stack, every attempt) as JSON, for admin tokens.
        "details_url": admin_url(f"/api/admin/operations/{operation.id}"),
    }
    what = "Email" if operation.kind == "email" else "Webhook processing"
    title = f"{what} {operation.name} failed after {operation.attempts} attempt(s)"
    message = f"Operation {operation.id} ({operation.subject or 'no subject'}) was dead-lettered: {error[:500]}"
    raise_alert(type_, level, f"{operation.name}:{fingerprint}", title, message, context, now=operation.dead_at)


# --- delivery to Slack -------------------------------------------------------------------------


def _escape(text) -> str:
    """Slack mrkdwn escaping: external text must not become links or mentions."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict:
    """The Slack message for an alert: a text fallback plus Block Kit blocks in a coloured attachment."""
    emoji, colour = LEVEL_STYLE[alert.level]
    headline = f"{emoji} {alert.level.upper()}: {alert.title}"
    context = alert.context or {}
    link = context.get("admin_url") or admin_url("/admin/operations-health")
    fields = [
        {
            "type": "mrkdwn",
            "text": f"*{FIELD_LABELS.get(key, key.replace('_', ' ').capitalize())}*\n{_escape(value)[:500]}",
        }
        for key, value in context.items()
        if key not in LINK_KEYS + ("report", "fingerprint", "error_kind")
        and value not in (None, "")
        and not isinstance(value, (dict, list))
    ][:MAX_FIELDS]
    blocks = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*{_escape(headline)}*\n{_escape(alert.message)}"[:MAX_SLACK_TEXT]},
        }
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    details = f" · <{context['details_url']}|Operation details (API)>" if context.get("details_url") else ""
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"<{link}|Open in Backstop>{details} · {alert.type} · alert #{alert.id}"}
            ],
        }
    )
    return {"text": headline[:MAX_SLACK_TEXT], "attachments": [{"color": colour, "blocks": blocks}]}


def post_to_slack(url: str, payload: dict, *, timeout: float, now: datetime) -> None:
    """POST to a Slack incoming webhook; failures classified as for every alert channel.

    Error messages never include the URL: it is a secret.
    """
    body = json.dumps(payload).encode("utf-8")
    channels.post(url, body, {"Content-Type": "application/json"}, timeout=timeout, now=now, what="Slack webhook")


@handler(DELIVERY_OPERATION, kind="alert", policy=RetryPolicy.from_ladder("10s, 1m"))
def deliver_alert(ctx) -> dict:
    """Post one alert to Slack when ``SLACK_WEBHOOK_URL`` is set; otherwise it stays recorded only.

    Returns the operation's result: where the alert went, or why it went nowhere.
    """
    alert_id = ctx.payload.get("alert_id")
    alert = db.session.get(Alert, alert_id)
    if alert is None or alert.delivered_at is not None:
        db.session.rollback()
        # Deleted by retention, or already delivered by an earlier attempt.
        return {"alert_id": alert_id, "delivered": False, "reason": "missing" if alert is None else "already_delivered"}
    db.session.expunge(alert)
    db.session.rollback()  # no transaction (no SQLite write lock) while Slack is called
    config = current_app.config
    url = config["SLACK_WEBHOOK_URL"]
    if not url:
        return {"alert_id": alert.id, "delivered": False, "reason": "no channel configured (recorded only)"}
    post_to_slack(url, slack_payload(alert), timeout=config["ALERT_SLACK_TIMEOUT_SECONDS"], now=ctx.now)
    db.session.execute(Alert.__table__.update().where(Alert.id == alert.id).values(delivered_at=ctx.now))
    return {"alert_id": alert.id, "delivered": True, "channel": "slack"}
