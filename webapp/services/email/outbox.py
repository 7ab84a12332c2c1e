"""Queueing an email: an ``email.<template>`` operation in the caller's transaction."""

from __future__ import annotations

from webapp.models import Operation
from webapp.services.engine.operations import create_operation

TEMPLATES = (
    "lead_purchase_confirmation",
    "credit_purchase_confirmation",
    "refund_notification",
    "payment_failed",
    "welcome",
)

# Templates whose delivery is a purchase's fulfilment (the customer being told).
FULFILMENT_TEMPLATES = frozenset({"lead_purchase_confirmation", "credit_purchase_confirmation"})


class UnknownTemplate(ValueError):
    """``queue_email`` was given a template name that does not exist."""


def operation_name(template: str) -> str:
    """The operation (and handler) name for a template: ``email.<template>``."""
    return f"email.{template}"


def queue_email(
    template: str,
    to: str,
    context: dict,
    *,
    idempotency_key: str,
    subject: str | None = None,
    purchase_id: int | None = None,
) -> Operation:
    """Add an email operation to the caller's transaction and return it (caller commits).

    The same ``idempotency_key`` returns the existing operation. The address is checked
    when the email is sent: a bad one dead-letters the operation with a readable reason
    instead of failing the caller's business transaction.
    """
    if template not in TEMPLATES:
        raise UnknownTemplate(f"unknown email template {template!r}; expected one of {', '.join(TEMPLATES)}")
    if not isinstance(context, dict):
        raise TypeError("email context must be a dict")
    payload = {"to": to, "template": template, "context": context, "purchase_id": purchase_id}
    if subject is None:
        subject = f"purchase:{purchase_id}" if purchase_id is not None else f"email:{to}"
    return create_operation(operation_name(template), payload, idempotency_key=idempotency_key, subject=subject[:255])
