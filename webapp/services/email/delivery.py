"""Delivering one email operation: validate, render, rate-limit, then send with failover.

Order of one attempt (each step's database work is its own short, committed transaction, so
no transaction — on SQLite, no write lock — is held while talking to a provider):

1. Already sent by an earlier attempt (an email-log ``sent`` row)? Succeed without sending again.
2. Invalid address or a template that cannot render → PermanentError (dead-letter with reason).
3. Every provider's circuit open → Deferral until the first one half-opens (no attempt used).
4. Rate limits (per recipient, global) → Deferral until the next free slot (no attempt used).
5. Providers in EMAIL_PROVIDERS order: a transient failure moves on to the next provider; a
   rejection of the message stops at once (another provider would reject it too) and
   dead-letters; success ends the attempt. When every provider failed the attempt fails
   (retried with backoff), or defers if every failure asked us to come back later (429 +
   Retry-After). Each provider try writes one email-log row.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from jinja2 import TemplateError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from webapp.domain.errors import Deferral, PermanentError, TransientError
from webapp.extensions import db
from webapp.models import EmailLog
from webapp.services.email import circuits, ratelimit
from webapp.services.email.providers import (
    NotConfigured,
    ProviderError,
    RejectedError,
    SendResult,
    build_provider,
)
from webapp.services.email.render import outgoing, render_email

log = logging.getLogger("backstop.email")
MAX_ERROR = 2000
# How long the record of an accepted send waits for an unreachable database: lost, it would
# let the next attempt send the email again.
SENT_RECORD_PATIENCE_SECONDS = 30.0
SENT_RECORD_PAUSE_SECONDS = 0.25


def deliver(ctx) -> dict:
    """Send the operation's email once, whatever the number of attempts it takes.

    Returns the operation's result: the provider that accepted it and its message id (what an
    admin quotes to the provider when a customer says no email came), or ``already_sent``.
    """
    operation, payload, now = ctx.operation, ctx.payload, ctx.now
    config = current_app.config
    earlier = sent_record(operation.id)
    if earlier is not None:
        log.info("email operation %s was already sent; not sending again", operation.id)
        return {"already_sent": True, "provider": earlier.provider, "message_id": earlier.provider_message_id}
    to = checked_address(payload.get("to"))
    template = payload.get("template") or operation.name.removeprefix("email.")
    email = _render(template, payload, to, ctx)
    names = _provider_names(config)
    _defer_if_all_circuits_open(names, now)
    ratelimit.reserve(
        to,
        now=now,
        per_recipient=config["EMAIL_RATE_PER_RECIPIENT_PER_MINUTE"],
        global_limit=config["EMAIL_RATE_GLOBAL_PER_MINUTE"],
    )
    record = _Recorder(operation.id, payload.get("purchase_id"), ctx.attempt, to, template)
    sent = send_with_failover(email, names, now=now, config=config, record=record)
    return {"provider": sent.provider, "message_id": sent.message_id, "to": to, "template": template}


def already_sent(operation_id: int) -> bool:
    """True if an earlier attempt's provider accepted this operation's email."""
    return sent_record(operation_id) is not None


def sent_record(operation_id: int):
    """The provider and message id of an earlier attempt's accepted send of this email, or None."""
    found = db.session.execute(
        select(EmailLog.provider, EmailLog.provider_message_id)
        .where(EmailLog.operation_id == operation_id, EmailLog.status == "sent")
        .limit(1)
    ).first()
    db.session.rollback()
    return found


def checked_address(address) -> str:
    """The normalised address, or PermanentError: a bad address does not get better with retries."""
    if not isinstance(address, str) or not address.strip():
        raise PermanentError("email has no recipient address")
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise PermanentError(f"invalid recipient address: {exc}") from exc


def _render(template: str, payload: dict, to: str, ctx):
    config = current_app.config
    try:
        rendered = render_email(template, payload.get("context") or {}, to=to, purchase_id=payload.get("purchase_id"))
    except TemplateError as exc:
        # A broken or missing template is a bug: dead-letter, fix, then retry from the admin page.
        raise PermanentError(f"email template {template!r} could not be rendered: {exc}") from exc
    return outgoing(
        rendered,
        sender=config["EMAIL_FROM"],
        to=to,
        idempotency_key=ctx.idempotency_key,
        metadata={"operation_id": ctx.operation.id, "template": template},
    )


def _provider_names(config) -> list[str]:
    names = list(config["EMAIL_PROVIDERS"])
    if not names:
        raise TransientError("EMAIL_PROVIDERS is empty: no email provider to send with")
    return names


def _defer_if_all_circuits_open(names: list[str], now: datetime) -> None:
    blocked = circuits.blocked_until(names, now)
    if len(blocked) == len(names):
        # A known outage is not this email's failure: wait for the first probe instead of
        # burning attempts (the open circuits are visible on the health page meanwhile).
        raise Deferral(min(blocked.values()), "every email provider's circuit is open")


_INSERT_LOG = EmailLog.__table__.insert()


class _Recorder:
    """Writes one email-log row per provider try, committed at once (failures must survive rollback)."""

    def __init__(self, operation_id, purchase_id, attempt, to, template):
        self.values = {
            "operation_id": operation_id,
            "purchase_id": purchase_id,
            "attempt": attempt,
            "to_address": to,
            "template": template,
        }

    def __call__(
        self, provider: str, status: str, now: datetime, *, message_id: str | None = None, error: str | None = None
    ) -> None:
        values = {
            "provider": provider,
            "status": status,
            "provider_message_id": message_id,
            "error": error[:MAX_ERROR] if error else None,
            "created_at": now,
            **self.values,
        }
        if status != "sent":
            _write_log(values)
            return
        _insist(lambda: _write_log(values), f"email operation {self.values['operation_id']}")


def _write_log(values: dict) -> None:
    """Insert one email-log row and commit."""
    db.session.connection().execute(_INSERT_LOG, values)
    db.session.commit()


def _insist(write, what: str) -> None:
    """Run ``write()`` (which commits), retrying through a database outage for up to SENT_RECORD_PATIENCE_SECONDS."""
    deadline = time.monotonic() + SENT_RECORD_PATIENCE_SECONDS
    while True:
        try:
            write()
            return
        except OperationalError as exc:
            db.session.rollback()
            if time.monotonic() >= deadline:
                raise
            log.warning("could not record the send of %s yet (%s); retrying", what, type(exc).__name__)
            time.sleep(SENT_RECORD_PAUSE_SECONDS)


def send_with_failover(email, names: list[str], *, now: datetime, config, record) -> SendResult:
    """Try each provider in order; return the first success or raise what the attempt amounts to."""
    failures: list[ProviderError] = []
    skipped: list[str] = []
    for name in names:
        try:
            provider = build_provider(name, config)
        except NotConfigured as exc:
            record(name, "skipped", now, error=f"not configured: {exc}")
            skipped.append(f"{name}: not configured ({exc})")
            continue
        if not circuits.acquire(name, now, config):
            record(name, "skipped", now, error="circuit open")
            skipped.append(f"{name}: circuit open")
            continue
        try:
            result = provider.send(email, now)
        except RejectedError as exc:
            # The provider is healthy; the message is not. Another provider would say the same.
            circuits.record_success(name, now)
            record(name, "failed", now, error=str(exc))
            raise PermanentError(f"rejected by {exc}") from exc
        except ProviderError as exc:
            circuits.record_failure(name, now, str(exc), config)
            record(name, "failed", now, error=str(exc))
            failures.append(exc)
            continue
        # Nothing between the provider's acceptance and this commit: it is what a retry after a
        # crash checks (already_sent) before sending again, so the duplicate window is only this.
        record(name, "sent", now, message_id=result.message_id)
        circuits.record_success(name, now)
        return result
    if not failures and any(reason.endswith("circuit open") for reason in skipped):
        # Lost the half-open probe to another worker: nothing was tried, so nothing failed.
        blocked = circuits.blocked_until(names, now)
        raise Deferral(
            min(blocked.values(), default=now + timedelta(seconds=1)), "every usable email provider's circuit is open"
        )
    raise _attempt_failure(failures, skipped)


def _attempt_failure(failures: list[ProviderError], skipped: list[str]) -> Exception:
    if failures and all(exc.retry_after for exc in failures):
        until = min(exc.retry_after for exc in failures)
        return Deferral(
            until, "every email provider asked us to retry later: " + "; ".join(str(exc) for exc in failures)
        )
    reasons = [str(exc) for exc in failures] + skipped
    return TransientError("every email provider failed: " + "; ".join(reasons))
