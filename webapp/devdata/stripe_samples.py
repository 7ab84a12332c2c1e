"""Realistic sample Stripe events, signed exactly as Stripe signs them (like ``stripe trigger``).

Used by ``flask --app wsgi stripe send-event`` so the whole flow can be tried without a
Stripe account, and by tests that need event bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

API_VERSION = "2024-06-20"

SUPPORTED_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.payment_failed",
    "charge.refunded",
)


@dataclass(frozen=True)
class PurchaseFacts:
    """What a sample event says about the purchase it concerns."""

    purchase_id: int | None = None
    amount_cents: int = 2500
    currency: str = "usd"
    email: str = "customer@example.com"
    payment_intent_id: str | None = None
    session_id: str | None = None


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def build_event(
    event_type: str,
    facts: PurchaseFacts | None = None,
    *,
    event_id: str | None = None,
    created: int | None = None,
    amount_refunded: int | None = None,
) -> dict:
    """A Stripe ``event`` object of ``event_type`` about the purchase in ``facts``."""
    facts = facts or PurchaseFacts()
    created = int(created if created is not None else time.time())
    payment_intent = facts.payment_intent_id or _id("pi")
    metadata = {"purchase_id": str(facts.purchase_id)} if facts.purchase_id is not None else {}
    if event_type.startswith("checkout.session."):
        data_object = _checkout_session(event_type, facts, payment_intent, metadata, created)
    elif event_type == "payment_intent.payment_failed":
        data_object = _failed_intent(facts, payment_intent, metadata, created)
    elif event_type == "charge.refunded":
        data_object = _refunded_charge(facts, payment_intent, metadata, created, amount_refunded)
    else:
        data_object = {"id": _id("obj"), "object": event_type.split(".")[0], "metadata": metadata}
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def _checkout_session(event_type, facts, payment_intent, metadata, created) -> dict:
    paid = event_type in ("checkout.session.completed", "checkout.session.async_payment_succeeded")
    return {
        "id": facts.session_id or _id("cs"),
        "object": "checkout.session",
        "mode": "payment",
        "amount_subtotal": facts.amount_cents,
        "amount_total": facts.amount_cents,
        "currency": facts.currency,
        "client_reference_id": metadata.get("purchase_id"),
        "created": created,
        "customer_details": {"email": facts.email},
        "customer_email": facts.email,
        "expires_at": created + 86400,
        "livemode": False,
        "metadata": metadata,
        "payment_intent": None if event_type == "checkout.session.expired" else payment_intent,
        "payment_status": "paid" if paid else "unpaid",
        "status": "expired" if event_type == "checkout.session.expired" else "complete",
        "url": None,
    }


def _failed_intent(facts, payment_intent, metadata, created) -> dict:
    return {
        "id": payment_intent,
        "object": "payment_intent",
        "amount": facts.amount_cents,
        "currency": facts.currency,
        "created": created,
        "livemode": False,
        "metadata": metadata,
        "status": "requires_payment_method",
        "last_payment_error": {
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
            "type": "card_error",
        },
    }


def _refunded_charge(facts, payment_intent, metadata, created, amount_refunded) -> dict:
    refunded = facts.amount_cents if amount_refunded is None else amount_refunded
    return {
        "id": _id("ch"),
        "object": "charge",
        "amount": facts.amount_cents,
        "amount_captured": facts.amount_cents,
        "amount_refunded": refunded,
        "captured": True,
        "created": created,
        "currency": facts.currency,
        "livemode": False,
        "metadata": metadata,
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": refunded >= facts.amount_cents,
        "status": "succeeded",
        "billing_details": {"email": facts.email},
    }


def encode(event: dict) -> str:
    """The body as Stripe sends it: pretty-printed JSON."""
    return json.dumps(event, indent=2)


def signature_header(body: str, secret: str, timestamp: int | None = None) -> str:
    """``Stripe-Signature``: ``t=<ts>,v1=<HMAC-SHA256 of "<ts>.<body>" keyed by the secret>``."""
    timestamp = int(timestamp if timestamp is not None else time.time())
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
