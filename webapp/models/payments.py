"""Payments records: customers, the product catalogue, purchases, Stripe events and refused deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.types import BigId

PRODUCT_KINDS = ("lead", "credits")
PAYMENT_METHODS = ("card", "credits")
PURCHASE_STATUSES = ("pending", "completed", "failed", "expired", "refunded", "partially_refunded")
FULFILMENT_STATUSES = ("pending", "sent", "failing", "undeliverable", "not_required")
EVENT_STATES = ("received", "processed", "ignored", "failed")


class Customer(db.Model):
    """A buyer: an email address, a name and a prepaid credit balance (never negative)."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    credit_balance_cents: Mapped[int] = mapped_column(default=0)
    # The storefront that created it (its API token's name; rows from before 0009: NULL, any storefront).
    storefront: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("credit_balance_cents >= 0", name="credit_balance_nonnegative"),)

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.email}>"


# The console's case-insensitive prefix search (services/console/customers.py): expression
# indexes on both databases; on PostgreSQL migration 0014 builds them ``COLLATE "C"``, so a
# prefix is a plain byte range whatever the database's collation.
Index("ix_customers_email_lower", func.lower(Customer.email))
Index("ix_customers_name_lower", func.lower(Customer.name))


class Product(db.Model):
    """A catalogue entry: a lead listing or a credit pack.

    Every amount is in cents of ``currency``: a pack costs ``price_cents`` and adds
    ``credit_cents_granted`` cents to the buyer's ``credit_balance_cents`` (a $100 pack grants 10000).
    """

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sku: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # lead | credits
    price_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    credit_cents_granted: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("kind IN ('lead', 'credits')", name="kind_known"),
        CheckConstraint("price_cents >= 0", name="price_nonnegative"),
        CheckConstraint("credit_cents_granted >= 0", name="credits_nonnegative"),
    )

    def __repr__(self) -> str:
        return f"<Product {self.sku} {self.kind} {self.price_cents}>"


class Purchase(db.Model):
    """One purchase of one product: how it was paid, where it stands, and whether the customer was told."""

    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    payment_method: Mapped[str] = mapped_column(String(20))  # card | credits
    status: Mapped[str] = mapped_column(String(20), default="pending")
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    refunded_cents: Mapped[int] = mapped_column(default=0)
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    checkout_url: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime | None]
    # When the confirmation email was sent (written by the email outcome listener).
    fulfilled_at: Mapped[datetime | None]
    refunded_at: Mapped[datetime | None]
    # pending, sent, failing, undeliverable, not_required (seed 002's "user never told" gap).
    fulfilment_status: Mapped[str] = mapped_column(String(20), default="pending")
    # "<api token id>:<Idempotency-Key>" of the request that made it: a repeat after a lost
    # answer finds this purchase instead of buying again (even if the key's record was lost).
    request_key: Mapped[str | None] = mapped_column(String(300))
    # The storefront that made it: only tokens of that name may read it (NULL: from before 0009).
    storefront: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship()
    product: Mapped[Product] = relationship()

    __table_args__ = (
        Index("ix_purchases_stripe_checkout_session_id", "stripe_checkout_session_id"),
        Index("ix_purchases_stripe_payment_intent_id", "stripe_payment_intent_id"),
        Index("ix_purchases_customer_id_created_at", "customer_id", "created_at"),
        Index("ix_purchases_status_created_at", "status", "created_at"),
        Index("uq_purchases_request_key", "request_key", unique=True),
        CheckConstraint("amount_cents >= 0", name="amount_nonnegative"),
        CheckConstraint("refunded_cents >= 0", name="refunded_nonnegative"),
    )

    def __repr__(self) -> str:
        return f"<Purchase {self.id} {self.status} {self.amount_cents}>"


class StripeEvent(db.Model):
    """A verified Stripe event, stored once per Stripe event id, with its processing operation."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's evt_... id
    type: Mapped[str] = mapped_column(String(120))
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    api_version: Mapped[str | None] = mapped_column(String(40))
    object_id: Mapped[str | None] = mapped_column(String(255))
    # The raw JSON body exactly as Stripe signed it.
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processing_state: Mapped[str] = mapped_column(String(20), default="received")
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("operations.id", ondelete="SET NULL"))
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        # Not unique: Stripe may send distinct events for one object and type.
        Index("ix_stripe_events_object_id_type", "object_id", "type"),
        Index("ix_stripe_events_received_at", "received_at"),
        # The console's event log filtered by state or by type, newest first.
        Index("ix_stripe_events_processing_state_received_at", "processing_state", "received_at"),
        Index("ix_stripe_events_type_received_at", "type", "received_at"),
    )

    def __repr__(self) -> str:
        return f"<StripeEvent {self.id} {self.type} {self.processing_state}>"


class StripeEventReplay(db.Model):
    """An admin's replay of a stored Stripe event: the new processing operation it created.

    The intake's own operation stays on ``StripeEvent.operation_id``; replays are listed here,
    so every operation an event caused is one indexed lookup by ``event_id``.
    """

    __tablename__ = "stripe_event_replays"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), ForeignKey("stripe_events.id", ondelete="CASCADE"))
    # 1, 2, ... per event: part of the replay operation's idempotency key.
    number: Mapped[int]
    # SET NULL: retention may delete the operation; the replay's record stays.
    operation_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("operations.id", ondelete="SET NULL"))
    requested_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_stripe_event_replays_event_id_number", "event_id", "number", unique=True),
        # Retention's DELETE of operations sets this NULL: without an index each deleted row scans the table.
        Index("ix_stripe_event_replays_operation_id", "operation_id"),
    )


class WebhookRejection(db.Model):
    """How many webhook deliveries were refused, per reason (no bodies are kept)."""

    __tablename__ = "webhook_rejections"

    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[datetime | None]
