"""Alert channels beyond Slack: email to the admins, and a signed JSON webhook (or PagerDuty Events API v2).

Each delivery is its own operation of kind ``alert`` (``alert.email`` per address,
``alert.webhook``), created with the alert in the caller's transaction, retried and
dead-lettered like any other. The payload names the alert and the channel, never a secret:
the URL, shared secret and routing key are read from the settings when the handler runs.

Why a failing channel cannot alert about itself, in a loop:

- a delivery is kind ``alert``, and only ``email`` and ``webhook`` operations reaching ``dead``
  raise alerts (``alerts.FAILURE_ALERTS``); dead alert deliveries are left out of the
  dead-letter threshold and of the average-attempts check;
- the email channel sends through the email providers (failover, circuits, rate limits, email
  log) *inside* its own ``alert.email`` operation, never through ``queue_email``: no
  ``email.*`` operation exists whose death could raise an ``email_failure`` alert that would be
  emailed again through the same broken providers.

Webhook signature (when ``ALERT_WEBHOOK_SECRET`` is set): header
``X-Backstop-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256(secret, ``"<t>." + raw body``). A receiver recomputes it over the raw bytes it got,
compares in constant time and rejects a ``t`` older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import requests
from flask import current_app

from webapp.domain.errors import Deferral, PermanentError, TransientError
from webapp.domain.retry import RetryPolicy
from webapp.extensions import db
from webapp.models import Alert
from webapp.services.email.delivery import deliver
from webapp.services.engine.operations import create_operation
from webapp.services.engine.registry import HandlerContext, handler

log = logging.getLogger("backstop.alerts")

EMAIL_OPERATION = "alert.email"
WEBHOOK_OPERATION = "alert.webhook"
WEBHOOK_FORMATS = ("json", "pagerduty")
SIGNATURE_HEADER = "X-Backstop-Signature"
DELIVERY_HEADER = "X-Backstop-Delivery"
# The same ladder as Slack: an alert that cannot go out within about a minute is dead-lettered.
ALERT_POLICY = RetryPolicy.from_ladder("10s, 1m")
LINK_KEYS = ("admin_url", "details_url")
HIDDEN_FIELDS = LINK_KEYS + ("report", "fingerprint", "error_kind")


def describe(config) -> list[str]:
    """Where alerts go, for the health page: channel names and counts only, never a URL, secret or address."""
    described = ["Slack"] if config["SLACK_WEBHOOK_URL"] else []
    if config["ALERT_EMAIL_TO"]:
        count = len(config["ALERT_EMAIL_TO"])
        described.append(f"email to {count} admin{'s' if count != 1 else ''}")
    if config["ALERT_WEBHOOK_URL"]:
        kind = "PagerDuty" if config["ALERT_WEBHOOK_FORMAT"] == "pagerduty" else "JSON"
        described.append(f"{kind} webhook" + (", signed" if config["ALERT_WEBHOOK_SECRET"] else ""))
    return described


def enqueue_deliveries(alert: Alert, now: datetime) -> list:
    """Create this alert's email and webhook delivery operations, for the channels configured now (caller commits)."""
    config = current_app.config
    created = []
    for address in config["ALERT_EMAIL_TO"]:
        created.append(
            create_operation(
                EMAIL_OPERATION,
                {"alert_id": alert.id, "channel": "email", "to": address},
                idempotency_key=f"alert:{alert.id}:email:{address}"[:255],
                subject=f"alert:{alert.type}:{alert.key}"[:255],
                now=now,
            )
        )
    if config["ALERT_WEBHOOK_URL"]:
        created.append(
            create_operation(
                WEBHOOK_OPERATION,
                {"alert_id": alert.id, "channel": "webhook"},
                idempotency_key=f"alert:{alert.id}:webhook",
                subject=f"alert:{alert.type}:{alert.key}"[:255],
                now=now,
            )
        )
    return created


def _load_alert(alert_id) -> Alert | None:
    """The alert, detached, with no transaction left open (none may be while a channel is called)."""
    alert = db.session.get(Alert, alert_id)
    if alert is not None:
        db.session.expunge(alert)
    db.session.rollback()
    return alert


def _fields(alert: Alert) -> list[tuple[str, str]]:
    return [
        (key.replace("_", " ").capitalize(), str(value)[:500])
        for key, value in (alert.context or {}).items()
        if key not in HIDDEN_FIELDS and value not in (None, "") and not isinstance(value, (dict, list))
    ]


def _link(alert: Alert) -> str:
    context = alert.context or {}
    return context.get("admin_url") or f"{current_app.config['PUBLIC_BASE_URL']}/admin/operations-health"


# --- email --------------------------------------------------------------------------------------


@handler(EMAIL_OPERATION, kind="alert", policy=ALERT_POLICY)
def deliver_alert_email(ctx) -> None:
    """Email one alert to one admin address through the email providers (failover, circuits, email log)."""
    alert = _load_alert(ctx.payload.get("alert_id"))
    if alert is None:
        return  # deleted by retention before it could be sent
    context = {
        "alert_id": alert.id,
        "type": alert.type,
        "level": alert.level,
        "title": alert.title,
        "message": alert.message,
        "fields": _fields(alert),
        "link": _link(alert),
        "details_url": (alert.context or {}).get("details_url"),
    }
    operation = SimpleNamespace(
        id=ctx.operation.id,
        name=ctx.operation.name,
        idempotency_key=ctx.idempotency_key,
        payload={"to": ctx.payload.get("to"), "template": "alert", "context": context},
    )
    # The email service's own delivery: already-sent check, address check, rendering, rate
    # limits, providers in failover order. Its failures are this alert operation's failures.
    deliver(HandlerContext(operation=operation, attempt=ctx.attempt, now=ctx.now))


# --- webhook ------------------------------------------------------------------------------------


def dedup_key(alert: Alert) -> str:
    """One key per alerting condition, so a recovery resolves what its firing triggered."""
    return f"backstop:{alert.type}:{alert.key}"[:255]


def _iso(when: datetime) -> str:
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def json_body(alert: Alert, operation_id: int) -> dict:
    """The generic webhook body."""
    context = alert.context or {}
    return {
        "event": "alert",
        "delivery_id": operation_id,
        "alert_id": alert.id,
        "type": alert.type,
        "level": alert.level,
        "state": alert.state,
        "key": alert.key,
        "dedup_key": dedup_key(alert),
        "title": alert.title,
        "message": alert.message,
        "context": {key: value for key, value in context.items() if key not in LINK_KEYS},
        "url": _link(alert),
        "details_url": context.get("details_url"),
        "created_at": _iso(alert.created_at),
    }


def pagerduty_body(alert: Alert, routing_key: str) -> dict | None:
    """A PagerDuty Events API v2 event: a recovery resolves, a problem triggers; None for news (info)."""
    if alert.state == "recovered":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key(alert)}
    if alert.level == "info":
        return None  # the daily report and other news are not incidents
    base = current_app.config["PUBLIC_BASE_URL"]
    link = _link(alert)
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(alert),
        "payload": {
            "summary": alert.title[:1024],
            "source": urlsplit(base).hostname or base,
            "severity": alert.level,  # Backstop's levels are PagerDuty's: info, warning, error, critical
            "timestamp": _iso(alert.created_at),
            "component": "backstop",
            "group": alert.type,
            "class": alert.type,
            "custom_details": {"message": alert.message, **dict(_fields(alert))},
        },
        "links": [{"href": link, "text": "Open in Backstop"}],
        "client": "Backstop",
        "client_url": link,
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Backstop-Signature`` value: ``t=<timestamp>,v1=<HMAC-SHA256(secret, "<t>." + body) in hex>``."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post(url: str, body: bytes, headers: dict, *, timeout: float, now: datetime, what: str) -> None:
    """POST a JSON body; classify failures for the engine. Messages never include the URL (a secret)."""
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise TransientError(f"{what} unreachable ({type(exc).__name__})") from None
    if response.status_code < 300:
        return
    text = response.text[:200]
    if response.status_code == 429:
        retry_after = response.headers.get("Retry-After", "")
        seconds = float(retry_after) if retry_after.isdigit() else 30.0
        raise Deferral(now + timedelta(seconds=min(seconds, 3600)), f"{what} rate limit")
    if response.status_code == 408 or response.status_code >= 500:
        raise TransientError(f"{what} answered {response.status_code}: {text}")
    raise PermanentError(f"{what} refused the alert with {response.status_code}: {text}")


@handler(WEBHOOK_OPERATION, kind="alert", policy=ALERT_POLICY)
def deliver_alert_webhook(ctx) -> None:
    """POST one alert to ``ALERT_WEBHOOK_URL``, signed when ``ALERT_WEBHOOK_SECRET`` is set."""
    config = current_app.config
    url = config["ALERT_WEBHOOK_URL"]
    alert = _load_alert(ctx.payload.get("alert_id"))
    if alert is None or not url:
        return  # deleted by retention, or the channel was switched off since
    if config["ALERT_WEBHOOK_FORMAT"] == "pagerduty":
        document = pagerduty_body(alert, config["ALERT_WEBHOOK_ROUTING_KEY"])
        if document is None:
            return
    else:
        document = json_body(alert, ctx.operation.id)
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(ctx.operation.id)}
    secret = config["ALERT_WEBHOOK_SECRET"]
    if secret:
        timestamp = int(ctx.now.replace(tzinfo=UTC).timestamp())
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    post(url, body, headers, timeout=config["ALERT_WEBHOOK_TIMEOUT_SECONDS"], now=ctx.now, what="Alert webhook")
