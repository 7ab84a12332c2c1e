"""Helpers for the email tests: an injected clock, running due operations, reading results."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from tests.support.reads import attempts_of, detached, load  # noqa: F401
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer, EmailLog, Operation, Product, Purchase
from webapp.services.email import queue_email
from webapp.services.email.providers.base import OutgoingEmail
from webapp.services.email.render import message_id, provider_idempotency_key
from webapp.services.engine import runner


class Clock:
    """A clock the test moves by hand: ``clock()`` is now, ``advance(s)`` moves it."""

    def __init__(self, start=None):
        # A minute ahead: operations queued during the test (at the real time) are due on this clock
        # even when a busy machine makes the test take seconds.
        self.now = start or (utcnow() + timedelta(minutes=1))

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


def queue(
    template: str = "welcome",
    to: str = "buyer@example.com",
    *,
    key: str | None = None,
    purchase_id: int | None = None,
    context: dict | None = None,
) -> int:
    """Queue one email, commit, return the operation id."""
    operation = queue_email(
        template,
        to,
        context if context is not None else {"customer_name": "Ada"},
        idempotency_key=key or f"email-{uuid.uuid4().hex}",
        purchase_id=purchase_id,
    )
    db.session.commit()
    return operation.id


def run(operation_id: int, clock: Clock):
    """Run one operation at the clock's time."""
    return runner.execute(operation_id, clock=clock)


def due_ids(now) -> list[int]:
    """Operations that are due at ``now``."""
    return detached(
        lambda: (
            db.session.execute(
                select(Operation.id)
                .where(Operation.state.in_(["pending", "retrying"]), Operation.next_attempt_at <= now)
                .order_by(Operation.id)
            )
            .scalars()
            .all()
        )
    )


def next_due(now):
    """When the earliest waiting operation becomes due (None when nothing waits)."""
    return detached(
        lambda: db.session.execute(
            select(Operation.next_attempt_at)
            .where(Operation.state.in_(["pending", "retrying"]))
            .order_by(Operation.next_attempt_at)
            .limit(1)
        ).scalar_one_or_none()
    )


def drain(clock: Clock, max_rounds: int = 100) -> int:
    """Run everything due, jumping the clock to the next due time, until nothing waits."""
    rounds = 0
    while rounds < max_rounds:
        for operation_id in due_ids(clock.now):
            run(operation_id, clock)
        upcoming = next_due(clock.now)
        if upcoming is None:
            return rounds
        clock.now = max(clock.now, upcoming)
        rounds += 1
    raise AssertionError("operations still waiting after max_rounds")


def email_log(operation_id: int | None = None) -> list[EmailLog]:
    """Email-log rows (of one operation, or all), oldest first."""
    query = select(EmailLog).order_by(EmailLog.id)
    if operation_id is not None:
        query = query.where(EmailLog.operation_id == operation_id)
    return detached(lambda: db.session.execute(query).scalars().all())


def make_purchase() -> int:
    """A completed card purchase waiting for its confirmation email."""
    customer = Customer(email="buyer@example.com", name="Ada")
    product = Product(sku="lead-1", name="Lead: Acme", kind="lead", price_cents=4900)
    db.session.add_all([customer, product])
    db.session.flush()
    purchase = Purchase(
        customer_id=customer.id, product_id=product.id, payment_method="card", status="completed", amount_cents=4900
    )
    db.session.add(purchase)
    db.session.commit()
    return purchase.id


def purchase_state(purchase_id: int):
    """(fulfilment_status, fulfilled_at) of a purchase, read in a fresh transaction."""
    db.session.expire_all()
    purchase = db.session.get(Purchase, purchase_id)
    result = (purchase.fulfilment_status, purchase.fulfilled_at)
    db.session.rollback()
    return result


def make_email(key: str = "op-key-1", to: str = "buyer@example.com") -> OutgoingEmail:
    """A rendered email whose identifiers derive from operation key ``key``."""
    sender = "Backstop <noreply@shop.example>"
    return OutgoingEmail(
        sender=sender,
        to=to,
        subject="Your purchase",
        text="Thanks!\n",
        html="<p>Thanks!</p>",
        message_id=message_id(key, sender),
        idempotency_key=provider_idempotency_key(key),
        metadata={"operation_id": 7},
    )
