"""Rendering an email operation with the app's Jinja environment, and its stable identifiers.

Templates live in ``templates/email/<template>.subject.txt``, ``.txt`` and ``.html``. HTML is
autoescaped (Flask's environment escapes ``.html`` templates); the text part and subject are
plain text. Each template gets the operation's ``context`` plus ``to``, ``purchase_id`` and a
``money(cents, currency)`` helper. Context keys each template understands (all optional unless
noted): ``customer_name``, ``product_name``, ``amount`` (preformatted) or ``amount_cents`` +
``currency``, ``credits`` (credit purchases), ``refunded_cents`` / ``reason`` (refunds),
``reason`` / ``retry_url`` (payment failed), ``dashboard_url``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import parseaddr

from flask import current_app

from webapp.services.email.providers import OutgoingEmail

CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "aud": "A$", "cad": "C$"}


@dataclass(frozen=True)
class RenderedEmail:
    """Subject, plain-text body and HTML body."""

    subject: str
    text: str
    html: str


def money(cents, currency: str | None = "usd") -> str:
    """``1999, "usd"`` → ``$19.99``; unknown currencies get their code (``19.99 CHF``)."""
    try:
        amount = int(cents) / 100
    except (TypeError, ValueError):
        return ""
    code = (currency or "usd").lower()
    symbol = CURRENCY_SYMBOLS.get(code)
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {code.upper()}"


def render_email(template: str, context: dict, *, to: str, purchase_id=None) -> RenderedEmail:
    """Render the three parts of ``template``; Jinja errors propagate to the caller."""
    env = current_app.jinja_env
    values = {**(context or {}), "to": to, "purchase_id": purchase_id, "money": money}
    subject = env.get_template(f"email/{template}.subject.txt").render(values)
    return RenderedEmail(
        subject=one_line(subject),
        text=env.get_template(f"email/{template}.txt").render(values).strip() + "\n",
        html=env.get_template(f"email/{template}.html").render(values),
    )


def one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace (no CR/LF can reach a header) and cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]


def key_digest(idempotency_key: str) -> str:
    """A stable digest of the operation's idempotency key (which may hold an address)."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()


def provider_idempotency_key(idempotency_key: str) -> str:
    """The key sent to providers: from the operation's key, identical on every attempt."""
    return f"backstop-email-{key_digest(idempotency_key)[:48]}"


def message_id(idempotency_key: str, sender: str) -> str:
    """The RFC 5322 Message-ID: from the operation's key and the sender's domain, never the attempt."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "backstop.invalid"
    return f"<{key_digest(idempotency_key)[:40]}@{domain}>"


def outgoing(rendered: RenderedEmail, *, sender: str, to: str, idempotency_key: str, metadata: dict) -> OutgoingEmail:
    """The provider-neutral message for a rendered email."""
    return OutgoingEmail(
        sender=sender,
        to=to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id(idempotency_key, sender),
        idempotency_key=provider_idempotency_key(idempotency_key),
        metadata=metadata,
    )
