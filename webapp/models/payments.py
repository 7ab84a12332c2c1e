"""Payments records: customers, the product catalogue, purchases, Stripe events and refused deliveries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text
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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("credit_balance_cents >= 0", name="credit_balance_nonnegative"),)

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.email}>"


class Product(db.Model):
    """A catalogue entry: a lead listing or a credit pack (which grants ``credits_granted``)."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sku: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # lead | credits
    price_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    credits_granted: Mapped[int] = mapped_column(default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("kind IN ('lead', 'credits')", name="kind_known"),
        CheckConstraint("price_cents >= 0", name="price_nonnegative"),
        CheckConstraint("credits_granted >= 0", name="credits_nonnegative"),
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
        Index("ix_stripe_events_processing_state", "processing_state"),
    )

    def __repr__(self) -> str:
        return f"<StripeEvent {self.id} {self.type} {self.processing_state}>"


class WebhookRejection(db.Model):
    """How many webhook deliveries were refused, per reason (no bodies are kept)."""

    __tablename__ = "webhook_rejections"

    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[datetime | None]
