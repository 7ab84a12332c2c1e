"""Rows and reads the payments tests share: customers, products, purchases, events, operations."""

from __future__ import annotations

from sqlalchemy import select

from tests.support.reads import detached
from webapp.devdata import stripe_samples
from webapp.extensions import db
from webapp.models import Customer, Operation, Product, Purchase, StripeEvent


def _saved(row):
    """Commit ``row`` and detach it, so later reads and rollbacks never reload it behind our back."""
    db.session.add(row)
    db.session.commit()
    db.session.expunge(row)
    return row


def add_customer(email="ada@example.com", name="Ada Lovelace", balance=0) -> Customer:
    """A committed customer."""
    customer = Customer(email=email, name=name, credit_balance_cents=balance)
    return _saved(customer)


def add_product(sku="lead-acme", kind="lead", price=2500, credits=0, name=None, active=True) -> Product:
    """A committed product."""
    product = Product(
        sku=sku,
        name=name or f"Product {sku}",
        kind=kind,
        price_cents=price,
        currency="usd",
        credit_cents_granted=credits,
        active=active,
    )
    return _saved(product)


def add_purchase(customer: Customer, product: Product, status="pending", **values) -> Purchase:
    """A committed card purchase."""
    purchase = Purchase(
        customer_id=customer.id,
        product_id=product.id,
        payment_method="card",
        status=status,
        amount_cents=product.price_cents,
        currency=product.currency,
        **values,
    )
    return _saved(purchase)


def event_for(event_type: str, purchase: Purchase | None, **kwargs) -> dict:
    """A realistic event about ``purchase``."""
    facts = stripe_samples.PurchaseFacts(
        purchase_id=purchase.id if purchase else None,
        amount_cents=purchase.amount_cents if purchase else 2500,
        payment_intent_id=kwargs.pop("payment_intent_id", None),
        session_id=kwargs.pop("session_id", None),
    )
    return stripe_samples.build_event(event_type, facts, **kwargs)


def purchase(purchase_id: int) -> Purchase:
    """Fresh copy of a purchase."""
    return detached(lambda: db.session.get(Purchase, purchase_id))


def customer(customer_id: int) -> Customer:
    """Fresh copy of a customer."""
    return detached(lambda: db.session.get(Customer, customer_id))


def event(event_id: str) -> StripeEvent | None:
    """Fresh copy of a stored event."""
    return detached(lambda: db.session.get(StripeEvent, event_id))


def operation(operation_id: int) -> Operation:
    """Fresh copy of an operation."""
    return detached(lambda: db.session.get(Operation, operation_id))


def operations(name_prefix: str = "", subject: str | None = None) -> list[Operation]:
    """Operations whose name starts with ``name_prefix`` (and with ``subject``), oldest first."""
    query = select(Operation).where(Operation.name.startswith(name_prefix)).order_by(Operation.id)
    if subject is not None:
        query = query.where(Operation.subject == subject)
    return detached(lambda: list(db.session.execute(query).scalars()))


def email_operations(purchase_id: int) -> list[Operation]:
    """Email operations queued for a purchase."""
    return operations("email.", subject=f"purchase:{purchase_id}")


def count(model) -> int:
    """Rows in a table."""
    return detached(lambda: len(db.session.execute(select(model)).scalars().all()))
