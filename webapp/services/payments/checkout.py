"""Card purchases: a pending purchase, then a Stripe Checkout Session through the stripe SDK."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

import stripe

from webapp.models import Purchase
from webapp.services.payments import purchases
from webapp.services.payments.errors import CheckoutFailed, PaymentsUnavailable

log = logging.getLogger("backstop.stripe")


@dataclass(frozen=True)
class StripeSettings:
    """How to reach Stripe's API (from the app config; ``api_base`` points at a test server)."""

    secret_key: str | None
    api_base: str | None
    timeout_seconds: float
    connect_timeout_seconds: float
    max_network_retries: int
    success_url: str
    cancel_url: str

    @classmethod
    def from_config(cls, config) -> StripeSettings:
        """Settings from a Flask config mapping."""
        return cls(
            secret_key=config["STRIPE_SECRET_KEY"],
            api_base=config["STRIPE_API_BASE"],
            timeout_seconds=config["STRIPE_TIMEOUT_SECONDS"],
            connect_timeout_seconds=config["STRIPE_CONNECT_TIMEOUT_SECONDS"],
            max_network_retries=config["STRIPE_MAX_NETWORK_RETRIES"],
            success_url=config["STRIPE_CHECKOUT_SUCCESS_URL"],
            cancel_url=config["STRIPE_CHECKOUT_CANCEL_URL"],
        )


def stripe_client(settings: StripeSettings) -> stripe.StripeClient:
    """A StripeClient with timeouts, bounded network retries and an optional API base."""
    if not settings.secret_key:
        raise PaymentsUnavailable("card payments are not configured (STRIPE_SECRET_KEY is not set)")
    base_addresses = {"api": settings.api_base.rstrip("/")} if settings.api_base else None
    return stripe.StripeClient(
        settings.secret_key,
        base_addresses=base_addresses,
        max_network_retries=settings.max_network_retries,
        http_client=stripe.RequestsClient(timeout=(settings.connect_timeout_seconds, settings.timeout_seconds)),
    )


def checkout_idempotency_key(purchase_id: int) -> str:
    """Stripe's Idempotency-Key for a purchase's Checkout Session: one session per purchase."""
    return f"backstop-checkout-purchase-{purchase_id}"


def buy_by_card(
    request: purchases.PurchaseRequest, settings: StripeSettings, request_key: str | None = None
) -> Purchase:
    """Create a pending purchase (committed), then its Checkout Session; return the purchase.

    A Stripe error marks the purchase failed with the reason and raises CheckoutFailed. With
    a ``request_key``, a purchase an earlier request made under it is resumed instead: its
    session is created (or, with the same Stripe idempotency key, found again) if missing.
    """
    client = stripe_client(settings)  # before the purchase: unconfigured means nothing is written
    purchase = purchases.find_by_request_key(request_key)
    if purchase is None:
        purchase = purchases.start_card_purchase(request, request_key=request_key)
    elif purchase.status == "failed" and not purchase.stripe_checkout_session_id:
        raise CheckoutFailed(purchase.failure_reason or "checkout failed", purchase.id)
    if purchase.stripe_checkout_session_id:
        return purchase
    params = session_params(purchase, request, settings)
    try:
        session = client.v1.checkout.sessions.create(
            params=params, options={"idempotency_key": checkout_idempotency_key(purchase.id)}
        )
    except stripe.StripeError as exc:
        reason = describe_stripe_error(exc)
        log.warning("checkout session for purchase %s failed: %s", purchase.id, reason)
        purchases.mark_checkout_failed(purchase.id, reason)
        raise CheckoutFailed(reason, purchase.id) from exc
    answer = session.to_dict()
    session_id, url = answer.get("id"), answer.get("url")
    if not session_id:
        reason = "Stripe answered without a Checkout Session id"
        purchases.mark_checkout_failed(purchase.id, reason)
        raise CheckoutFailed(reason, purchase.id)
    purchases.attach_checkout(purchase.id, session_id, url)
    purchase.stripe_checkout_session_id, purchase.checkout_url = session_id, url
    return purchase


def session_params(purchase: Purchase, request: purchases.PurchaseRequest, settings: StripeSettings) -> dict:
    """The Checkout Session parameters: one line item, the purchase id in the metadata."""
    product, customer = request.product, request.customer
    metadata = {"purchase_id": str(purchase.id)}
    purchase_id = quote(str(purchase.id))
    return {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": product.currency,
                    "unit_amount": product.price_cents,
                    "product_data": {"name": product.name, "metadata": {"sku": product.sku}},
                },
            }
        ],
        "customer_email": customer.email,
        "client_reference_id": str(purchase.id),
        "metadata": metadata,
        # The PaymentIntent (and so its charges and refunds) carries the purchase id too.
        "payment_intent_data": {"metadata": metadata},
        "success_url": settings.success_url.replace("{purchase_id}", purchase_id),
        "cancel_url": settings.cancel_url.replace("{purchase_id}", purchase_id),
    }


def describe_stripe_error(exc: stripe.StripeError) -> str:
    """A readable, secret-free reason for a Stripe failure."""
    status = getattr(exc, "http_status", None)
    code = getattr(exc, "code", None)
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    parts = [type(exc).__name__]
    if status:
        parts.append(f"HTTP {status}")
    if code:
        parts.append(str(code))
    return f"{' '.join(parts)}: {message}"[:1000]
