"""Errors the storefront services raise; the API blueprint maps each to one HTTP answer."""

from __future__ import annotations


class PaymentsError(Exception):
    """Base class: ``code`` is the stable error code, ``message`` the readable text."""

    code = "payments_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationFailed(PaymentsError):
    """Input that fails validation; ``fields`` maps each bad field to why."""

    code = "validation_failed"

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in fields.items()))
        self.fields = fields


class NotFound(PaymentsError):
    """The thing asked for does not exist."""

    code = "not_found"


class Conflict(PaymentsError):
    """The request clashes with the current state (a duplicate, a short balance)."""

    code = "conflict"

    def __init__(self, message: str, code: str = "conflict"):
        super().__init__(message)
        self.code = code


class PaymentsUnavailable(PaymentsError):
    """Card payments cannot be taken right now (not configured)."""

    code = "payments_unavailable"


# What the storefront is told when a Checkout Session could not be created: the SDK's own text
# (host names, connection internals, Stripe's request ids) stays in the log and on the purchase.
CHECKOUT_FAILED_MESSAGE = "the card checkout could not be started (payment provider error); nothing was charged"


class CheckoutFailed(PaymentsError):
    """Stripe refused or could not be reached while creating the Checkout Session.

    ``str(exc)`` is the detailed reason, for the log and the purchase; clients get
    :data:`CHECKOUT_FAILED_MESSAGE` under the stable code ``stripe_error``.
    """

    code = "stripe_error"

    def __init__(self, message: str, purchase_id: int):
        super().__init__(message)
        self.purchase_id = purchase_id
