"""Purchases: paid with credits (at once) or by card (Stripe Checkout), and their transitions.

Every transition is a conditional UPDATE (``pending → completed`` only from ``pending``), so a
duplicate or concurrent event cannot apply twice; the confirmation email is queued in the
same transaction as the transition it confirms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from webapp.domain.errors import TransientError
from webapp.domain.text import text_problem
from webapp.domain.time import iso, utcnow
from webapp.extensions import db
from webapp.models import Customer, Product, Purchase
from webapp.models.payments import PAYMENT_METHODS
from webapp.services.email import queue_email
from webapp.services.payments.errors import CHECKOUT_FAILED_MESSAGE, Conflict, NotFound, ValidationFailed

log = logging.getLogger("backstop.payments")

# States from which a checkout payment may still complete the purchase: a declined card
# (payment_intent.payment_failed) can be followed by a successful retry in the same session.
COMPLETABLE = ("pending", "failed")
PAID = ("completed", "refunded", "partially_refunded")
MAX_ID = 2**53


@dataclass(frozen=True)
class PurchaseRequest:
    """A validated ``POST /api/purchases`` body."""

    customer: Customer
    product: Product
    payment_method: str
    storefront: str | None = None


@dataclass(frozen=True)
class Transition:
    """What a transition did: ``outcome`` (e.g. completed, already_completed) and the purchase."""

    outcome: str
    purchase: Purchase | None = None


def money(cents: int, currency: str) -> str:
    """A human amount such as ``$12.50`` or ``12.50 EUR`` for emails."""
    symbols = {"usd": "$", "gbp": "£", "eur": "€", "aud": "A$", "cad": "C$"}
    amount = f"{cents / 100:,.2f}"
    symbol = symbols.get((currency or "").lower())
    return f"{symbol}{amount}" if symbol else f"{amount} {(currency or '').upper()}"


def visible_to(row: Customer | Purchase | None, storefront: str | None) -> bool:
    """Whether a storefront may see this customer or purchase: its own, or one from before ownership."""
    return row is not None and (storefront is None or row.storefront is None or row.storefront == storefront)


def check_purchase_input(data: dict, storefront: str | None = None) -> PurchaseRequest:
    """Validate ``{customer_id, product_sku, payment_method}``; every bad field at once.

    Another storefront's customer is reported exactly like a missing one.
    """
    fields: dict[str, str] = {}
    customer_id = data.get("customer_id")
    customer = product = None
    if customer_id is None:
        fields["customer_id"] = "is required"
    elif isinstance(customer_id, bool) or not isinstance(customer_id, int) or not 0 < customer_id < MAX_ID:
        fields["customer_id"] = "must be a positive integer"
    else:
        customer = db.session.get(Customer, customer_id)
        if not visible_to(customer, storefront):
            customer = None
            fields["customer_id"] = f"no customer has id {customer_id}"
    sku = data.get("product_sku")
    if sku is None or sku == "":
        fields["product_sku"] = "is required"
    elif not isinstance(sku, str) or len(sku) > 80:
        fields["product_sku"] = "must be a product sku string"
    elif problem := text_problem(sku):
        fields["product_sku"] = problem
    else:
        product = db.session.execute(select(Product).where(Product.sku == sku)).scalar_one_or_none()
        if product is None:
            fields["product_sku"] = f"no product has sku {sku!r}"
        elif not product.active:
            fields["product_sku"] = f"product {sku!r} is no longer sold"
    method = data.get("payment_method")
    if method is None or method == "":
        fields["payment_method"] = "is required"
    elif method not in PAYMENT_METHODS:
        fields["payment_method"] = f"must be one of {', '.join(PAYMENT_METHODS)}"
    elif method == "credits" and product is not None and product.kind == "credits":
        fields["payment_method"] = "credit packs cannot be bought with credits; use card"
    if fields:
        raise ValidationFailed(fields)
    return PurchaseRequest(customer, product, method, storefront)


def find_by_request_key(request_key: str | None) -> Purchase | None:
    """The purchase an earlier request with this key made, if any."""
    if not request_key:
        return None
    purchase = db.session.execute(select(Purchase).where(Purchase.request_key == request_key)).scalar_one_or_none()
    db.session.rollback()
    return purchase


def buy_with_credits(
    request: PurchaseRequest, *, request_key: str | None = None, now: datetime | None = None
) -> Purchase:
    """Deduct the price from the balance atomically, complete the purchase and queue its
    confirmation, all in one transaction; commits. A short balance is a Conflict.

    With a ``request_key`` an earlier purchase made under it is returned instead: a repeat
    after a lost answer never pays twice."""
    existing = find_by_request_key(request_key)
    if existing is not None:
        return existing
    now = now or utcnow()
    customer, product = request.customer, request.product
    deducted = db.session.execute(
        update(Customer)
        .where(Customer.id == customer.id, Customer.credit_balance_cents >= product.price_cents)
        .values(credit_balance_cents=Customer.credit_balance_cents - product.price_cents)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not deducted:
        balance = db.session.execute(
            select(Customer.credit_balance_cents).where(Customer.id == customer.id)
        ).scalar_one()
        db.session.rollback()
        raise Conflict(
            f"credit balance {balance} is below the price {product.price_cents}", code="insufficient_credits"
        )
    purchase = Purchase(
        customer_id=customer.id,
        product_id=product.id,
        payment_method="credits",
        status="completed",
        amount_cents=product.price_cents,
        currency=product.currency,
        completed_at=now,
        created_at=now,
        updated_at=now,
        request_key=request_key,
        storefront=request.storefront,
    )
    db.session.add(purchase)
    db.session.flush()
    queue_confirmation(purchase, customer, product)
    db.session.commit()
    return purchase


def start_card_purchase(
    request: PurchaseRequest, *, request_key: str | None = None, now: datetime | None = None
) -> Purchase:
    """Create and commit a pending card purchase (the Checkout Session comes next)."""
    now = now or utcnow()
    purchase = Purchase(
        customer_id=request.customer.id,
        product_id=request.product.id,
        payment_method="card",
        status="pending",
        amount_cents=request.product.price_cents,
        currency=request.product.currency,
        created_at=now,
        updated_at=now,
        request_key=request_key,
        storefront=request.storefront,
    )
    db.session.add(purchase)
    db.session.commit()
    return purchase


def attach_checkout(purchase_id: int, session_id: str, url: str | None, *, now: datetime | None = None) -> None:
    """Record the Checkout Session created for a purchase; commits."""
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id)
        .values(stripe_checkout_session_id=session_id, checkout_url=url, updated_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def mark_checkout_failed(purchase_id: int, reason: str, *, now: datetime | None = None) -> None:
    """A pending purchase whose Checkout Session could not be created fails with ``reason``; commits."""
    db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status == "pending")
        .values(status="failed", failure_reason=reason[:2000], updated_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def get_purchase(purchase_id: int) -> Purchase:
    """The purchase with this id (read-only; ends its transaction), or NotFound."""
    purchase = db.session.get(Purchase, purchase_id, populate_existing=True)
    if purchase is None:
        db.session.rollback()
        raise NotFound(f"purchase {purchase_id} does not exist")
    db.session.expunge(purchase)
    db.session.rollback()
    return purchase


def product_sku(product_id: int) -> str | None:
    """The sku of a product id (read-only; ends its transaction)."""
    sku = db.session.execute(select(Product.sku).where(Product.id == product_id)).scalar_one_or_none()
    db.session.rollback()
    return sku


def _public_failure_reason(purchase: Purchase) -> str | None:
    """A failed checkout (no session was ever made) shows the generic message, not the SDK's text."""
    if purchase.status == "failed" and purchase.payment_method == "card" and not purchase.stripe_checkout_session_id:
        return CHECKOUT_FAILED_MESSAGE
    return purchase.failure_reason


def describe_for_admins(purchase: Purchase, product_sku: str | None = None) -> dict:
    """The storefront's view plus what only admins see: the full failure reason and Stripe's ids."""
    return {
        **describe(purchase, product_sku),
        "failure_reason": purchase.failure_reason,
        "stripe_checkout_session_id": purchase.stripe_checkout_session_id,
        "stripe_payment_intent_id": purchase.stripe_payment_intent_id,
        "updated_at": iso(purchase.updated_at),
    }


def describe(purchase: Purchase, product_sku: str | None = None) -> dict:
    """The storefront's view of a purchase (JSON-ready)."""
    return {
        "id": purchase.id,
        "customer_id": purchase.customer_id,
        "product_sku": product_sku,
        "payment_method": purchase.payment_method,
        "status": purchase.status,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "refunded_cents": purchase.refunded_cents,
        "fulfilment_status": purchase.fulfilment_status,
        "checkout_url": purchase.checkout_url if purchase.status == "pending" else None,
        "failure_reason": _public_failure_reason(purchase),
        "created_at": iso(purchase.created_at),
        "completed_at": iso(purchase.completed_at),
        "fulfilled_at": iso(purchase.fulfilled_at),
        "refunded_at": iso(purchase.refunded_at),
    }


# --- transitions driven by Stripe events (inside the handler's transaction; no commit) ---


def complete(
    purchase_id: int, *, now: datetime, session_id: str | None = None, payment_intent_id: str | None = None
) -> Transition:
    """``pending → completed`` once: grant credit-pack credits and queue the confirmation.

    Reports ``already_completed`` when another event got there first.
    """
    values = {"status": "completed", "completed_at": now, "updated_at": now, "failure_reason": None}
    if session_id:
        values["stripe_checkout_session_id"] = session_id
    if payment_intent_id:
        values["stripe_payment_intent_id"] = payment_intent_id
    changed = db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status.in_(COMPLETABLE))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    purchase = db.session.get(Purchase, purchase_id, populate_existing=True)
    if not changed:
        return Transition(
            "already_completed" if purchase.status in PAID else f"not_completable:{purchase.status}", purchase
        )
    product, customer = purchase.product, purchase.customer
    if product.kind == "credits" and product.credit_cents_granted:
        # Exactly once: only the transaction that won the conditional UPDATE gets here.
        db.session.execute(
            update(Customer)
            .where(Customer.id == customer.id)
            .values(credit_balance_cents=Customer.credit_balance_cents + product.credit_cents_granted)
            .execution_options(synchronize_session=False)
        )
    queue_confirmation(purchase, customer, product)
    return Transition("completed", purchase)


def fail(purchase_id: int, status: str, reason: str, *, now: datetime) -> Transition:
    """``pending → failed|expired`` (``failed → expired`` too) and queue the payment-failed email."""
    sources = ("pending",) if status == "failed" else ("pending", "failed")
    changed = db.session.execute(
        update(Purchase)
        .where(Purchase.id == purchase_id, Purchase.status.in_(sources))
        .values(status=status, failure_reason=reason[:2000], updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    purchase = db.session.get(Purchase, purchase_id, populate_existing=True)
    if not changed:
        return Transition(f"already_{purchase.status}", purchase)
    customer, product = purchase.customer, purchase.product
    queue_email(
        "payment_failed",
        customer.email,
        {**_context(purchase, customer, product), "failure_reason": reason[:500]},
        idempotency_key=f"purchase:{purchase.id}:payment_failed",
        purchase_id=purchase.id,
    )
    return Transition(status, purchase)


def refund(purchase_id: int, refunded_cents: int, *, now: datetime, event_id: str) -> Transition:
    """Record a full or partial refund once per amount and queue the refund notification.

    ``refunded_cents`` is the charge's cumulative ``amount_refunded``, so a stale or repeated
    event (a lower or equal amount) changes nothing.
    """
    purchase = db.session.get(Purchase, purchase_id, populate_existing=True)
    previous = purchase.refunded_cents or 0
    target = min(refunded_cents, purchase.amount_cents)
    status = "refunded" if target >= purchase.amount_cents else "partially_refunded"
    changed = db.session.execute(
        update(Purchase)
        .where(
            Purchase.id == purchase_id,
            Purchase.status.in_(("completed", "partially_refunded")),
            Purchase.refunded_cents < target,
        )
        .values(status=status, refunded_cents=target, refunded_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(purchase)
    if not changed:
        return Transition(
            "already_refunded"
            if purchase.status in ("refunded", "partially_refunded") and purchase.refunded_cents >= target
            else f"not_refundable:{purchase.status}",
            purchase,
        )
    customer, product = purchase.customer, purchase.product
    removed, spent = claw_back_credits(customer.id, product, purchase.amount_cents, previous, target)
    queue_email(
        "refund_notification",
        customer.email,
        {
            **_context(purchase, customer, product),
            "refunded_amount": money(target, purchase.currency),
            "refunded_cents": target,
            "fully_refunded": "yes" if status == "refunded" else "no",
            "credits_removed": removed,
            "credits_removed_display": money(removed, purchase.currency),
            "credits_already_spent": spent,
        },
        idempotency_key=f"stripe-event:{event_id}:refund_notification",
        purchase_id=purchase.id,
    )
    return Transition(status, purchase)


def claw_back_credits(
    customer_id: int, product: Product, amount_cents: int, previous_cents: int, target_cents: int
) -> tuple[int, int]:
    """Take back the refunded share of a credit pack's credits, as far as they are unspent.

    A refund of ``target - previous`` cents of ``amount_cents`` owes back the same share of
    ``credit_cents_granted`` (rounded so that a full refund owes exactly all of them). The balance
    never goes below zero: credits already spent stay spent. Returns ``(removed, already_spent)``.
    Runs in the caller's transaction; a concurrent change of the balance raises TransientError
    (the whole refund transaction rolls back and is retried).
    """
    granted = product.credit_cents_granted or 0
    if product.kind != "credits" or granted <= 0 or amount_cents <= 0:
        return 0, 0
    owed = granted * target_cents // amount_cents - granted * previous_cents // amount_cents
    if owed <= 0:
        return 0, 0
    balance = db.session.execute(select(Customer.credit_balance_cents).where(Customer.id == customer_id)).scalar_one()
    removed = min(owed, max(balance, 0))
    if removed:
        changed = db.session.execute(
            update(Customer)
            .where(Customer.id == customer_id, Customer.credit_balance_cents >= removed)
            .values(credit_balance_cents=Customer.credit_balance_cents - removed)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not changed:
            raise TransientError(
                f"customer {customer_id}'s credit balance changed while refunded credits were being removed; retrying"
            )
    if owed > removed:
        log.warning(
            "refund of credit pack for customer %s: %s refunded credits were already spent", customer_id, owed - removed
        )
    return removed, owed - removed


def queue_confirmation(purchase: Purchase, customer: Customer, product: Product):
    """Queue the purchase's confirmation email (lead or credit template) in the caller's transaction."""
    template = "credit_purchase_confirmation" if product.kind == "credits" else "lead_purchase_confirmation"
    context = _context(purchase, customer, product)
    if product.kind == "credits":
        context.update(
            credits_granted=product.credit_cents_granted,
            credits_display=money(product.credit_cents_granted, product.currency),
        )
    return queue_email(
        template,
        customer.email,
        context,
        idempotency_key=f"purchase:{purchase.id}:confirmation",
        purchase_id=purchase.id,
    )


def _context(purchase: Purchase, customer: Customer, product: Product) -> dict:
    return {
        "purchase_id": purchase.id,
        "customer_name": customer.name,
        "customer_email": customer.email,
        "product_name": product.name,
        "product_sku": product.sku,
        "product_kind": product.kind,
        "payment_method": purchase.payment_method,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "amount": money(purchase.amount_cents, purchase.currency),
    }
