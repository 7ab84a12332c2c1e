"""Demo data: a week of believable traffic so a newcomer sees living admin pages.

Rows are written directly through the models (no doorbell), and every generated operation
is finished (succeeded, dead, resolved, cancelled) or scheduled in the future, so a running
worker has nothing to pick up until an admin retries something.
"""

from __future__ import annotations

import json
import random
import traceback
from datetime import datetime, timedelta

from sqlalchemy import func, select

from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AuditEntry, Operation, OperationAttempt
from webapp.models.email import EmailLog
from webapp.models.payments import Customer, Product, Purchase, StripeEvent


class NotEmpty(RuntimeError):
    """The database already holds data; demo data only fills an empty one."""


FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Ken",
    "Margaret",
    "Linus",
    "Radia",
    "Donald",
    "Frances",
    "John",
    "Katherine",
    "Dennis",
    "Hedy",
    "Tim",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Thompson",
    "Hamilton",
    "Torvalds",
    "Perlman",
    "Knuth",
    "Allen",
    "Backus",
    "Johnson",
    "Ritchie",
    "Lamarr",
    "Berners-Lee",
]

# (error class, message template, permanent?) per kind; {n}, {email}, {hex} vary per row.
FAILURES = {
    "email": [
        ("smtplib.SMTPServerDisconnected", "SMTP connection timeout after {n}s to smtp.mailhost.net:587", False),
        ("webapp.domain.errors.PermanentError", "550 5.1.1 <{email}>: Recipient address rejected", True),
        ("webapp.domain.errors.TransientError", "Resend API 503 Service Unavailable (request id {hex})", False),
    ],
    "webhook": [
        ("sqlalchemy.exc.OperationalError", "Database connection timeout after {n} ms", False),
        ("webapp.domain.errors.PermanentError", "No purchase matches checkout session cs_test_{hex}", True),
        ("webapp.domain.errors.TransientError", "Stripe API 500 while retrieving pi_{hex}", False),
    ],
    "job": [("ZeroDivisionError", "division by zero in report row {n}", False)],
    "alert": [("webapp.domain.errors.PermanentError", "Slack webhook answered 404 no_service (channel {n})", True)],
}


def is_empty() -> bool:
    """True when there are no operations, customers or purchases yet."""
    counts = [
        db.session.execute(select(func.count()).select_from(model)).scalar_one()
        for model in (Operation, Customer, Purchase)
    ]
    db.session.rollback()
    return not any(counts)


def fill(days: int = 7, seed: int = 7, now: datetime | None = None) -> dict:
    """Write the demo mix into an empty database; return counts of what was made. Commits."""
    if not is_empty():
        raise NotEmpty("the database already has data; demo-data only fills an empty database")
    rng = random.Random(seed)
    now = now or utcnow()
    builder = _Builder(rng, now, days)
    builder.customers_and_products()
    for _ in range(days * 24):
        builder.purchase()
    for _ in range(days * 6):
        builder.standalone_job()
    builder.scheduled()
    builder.audit_trail()
    db.session.commit()
    return builder.counts


class _Builder:
    """Keeps the random source, the clock and the counters while rows are made."""

    def __init__(self, rng: random.Random, now: datetime, days: int):
        self.rng, self.now, self.days = rng, now, days
        self.counts = {"customers": 0, "purchases": 0, "operations": 0, "dead letters": 0, "emails logged": 0}
        self.customers: list[Customer] = []
        self.products: list[Product] = []
        self.sequence = 0
        self.attempts: list[OperationAttempt] = []
        self.resolved: list[Operation] = []

    def customers_and_products(self) -> None:
        """A catalogue of four products and forty customers."""
        self.products = [
            Product(sku="lead-solar-ca", name="Solar lead, California", kind="lead", price_cents=4900),
            Product(sku="lead-roof-tx", name="Roofing lead, Texas", kind="lead", price_cents=3900),
            # Credit is money: the $100 pack (sold for $90) adds 10000 cents to the balance.
            Product(
                sku="credits-100", name="$100 credit pack", kind="credits", price_cents=9000, credit_cents_granted=10000
            ),
            Product(
                sku="credits-500",
                name="$500 credit pack",
                kind="credits",
                price_cents=40000,
                credit_cents_granted=50000,
            ),
        ]
        db.session.add_all(self.products)
        for index in range(40):
            first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
            customer = Customer(
                email=f"{first}.{last}{index}@example.com".lower(),
                name=f"{first} {last}",
                created_at=self.now - timedelta(days=self.days + 3),
            )
            self.customers.append(customer)
        db.session.add_all(self.customers)
        db.session.flush()
        self.counts["customers"] = len(self.customers)

    def _when(self) -> datetime:
        return self.now - timedelta(seconds=self.rng.uniform(120, self.days * 86400))

    def purchase(self) -> None:
        """A purchase, its Stripe webhook's processing and its confirmation email."""
        customer, product = self.rng.choice(self.customers), self.rng.choice(self.products)
        at = self._when()
        purchase = Purchase(
            customer_id=customer.id,
            product_id=product.id,
            payment_method="card",
            status="completed",
            amount_cents=product.price_cents,
            created_at=at,
            updated_at=at,
            completed_at=at + timedelta(seconds=20),
            fulfilment_status="sent",
            stripe_checkout_session_id=f"cs_test_{self.rng.getrandbits(48):012x}",
        )
        db.session.add(purchase)
        db.session.flush()
        self.counts["purchases"] += 1
        event_id = f"evt_{self.rng.getrandbits(64):016x}"
        webhook = self.operation(
            "webhook",
            "stripe.checkout.session.completed",
            at + timedelta(seconds=15),
            {
                "event_id": event_id,
                "type": "checkout.session.completed",
                "object_id": purchase.stripe_checkout_session_id,
            },
            subject=f"purchase:{purchase.id}",
        )
        db.session.add(
            StripeEvent(
                id=event_id,
                type="checkout.session.completed",
                object_id=purchase.stripe_checkout_session_id,
                operation_id=webhook.id,
                payload=json.dumps(_checkout_event(event_id, purchase)),
                received_at=at + timedelta(seconds=15),
                processing_state="processed" if webhook.state == "succeeded" else "failed",
            )
        )
        if webhook.state != "succeeded":
            purchase.status, purchase.fulfilment_status, purchase.completed_at = "pending", "pending", None
            return
        template = "lead_purchase_confirmation" if product.kind == "lead" else "credit_purchase_confirmation"
        context = {"name": customer.name, "product": product.name}
        if product.kind == "credits":  # the completion granted the pack's credits (as purchases.complete does)
            customer.credit_balance_cents = (customer.credit_balance_cents or 0) + product.credit_cents_granted
            context["credits_granted"] = product.credit_cents_granted
        email = self.operation(
            "email",
            f"email.{template}",
            at + timedelta(seconds=25),
            {
                "to": customer.email,
                "template": template,
                "purchase_id": purchase.id,
                "context": context,
            },
            subject=f"purchase:{purchase.id}",
        )
        self.email_log(email, purchase, customer, template)
        if email.state == "dead":
            purchase.fulfilment_status = "undeliverable" if email.error_kind == "permanent" else "failing"
        else:
            purchase.fulfilled_at = email.succeeded_at

    def standalone_job(self) -> None:
        """A nightly-report job or an alert, now and then."""
        if self.rng.random() < 0.7:
            self.operation("job", "reports.daily_summary", self._when(), {"day": self._when().date().isoformat()})
        else:
            self.operation(
                "alert",
                "alert.slack",
                self._when(),
                {"text": "Dead-letter queue above 10 items"},
                subject="alert:dlq_threshold",
            )

    def scheduled(self) -> None:
        """A few welcome emails scheduled for later (they can be cancelled from the console)."""
        for customer in self.customers[:3]:
            self.sequence += 1
            run_at = self.now + timedelta(days=2, minutes=self.sequence)
            db.session.add(
                Operation(
                    kind="email",
                    name="email.welcome",
                    payload={"to": customer.email, "template": "welcome", "context": {"name": customer.name}},
                    idempotency_key=f"demo:welcome:{customer.id}",
                    subject=f"email:{customer.email}",
                    state="scheduled",
                    attempts=0,
                    max_attempts=4,
                    next_attempt_at=run_at,
                    run_at=run_at,
                    created_at=self.now,
                    updated_at=self.now,
                )
            )
            self.counts["operations"] += 1

    def operation(self, kind: str, name: str, at: datetime, payload: dict, subject: str | None = None) -> Operation:
        """One finished operation with its attempts: mostly first-time successes, some retries, some dead."""
        self.sequence += 1
        roll = self.rng.random()
        failures = 0 if roll < 0.82 else self.rng.randint(1, 3) if roll < 0.93 else -1
        error_class, template, permanent = self.rng.choice(FAILURES[kind])
        max_attempts = {"email": 4, "webhook": 6, "job": 4, "alert": 3}[kind]
        attempts_made = (1 if permanent else max_attempts) if failures < 0 else failures + 1
        operation = Operation(
            kind=kind,
            name=name,
            payload=payload,
            subject=subject,
            idempotency_key=f"demo:{name}:{self.sequence}",
            attempts=attempts_made,
            max_attempts=max_attempts,
            created_at=at,
            updated_at=at,
            next_attempt_at=at,
        )
        db.session.add(operation)
        db.session.flush()
        started = at
        message = ""
        self.attempts: list[OperationAttempt] = []
        for number in range(1, attempts_made + 1):
            last = number == attempts_made
            ok = failures >= 0 and last
            message = template.format(
                n=self.rng.randint(2, 9999),
                hex=f"{self.rng.getrandbits(40):010x}",
                email=payload.get("to", "someone@example.com"),
            )
            duration = self.rng.randint(40, 900) if ok else self.rng.randint(200, 30000)
            outcome = "succeeded" if ok else ("dead" if last else "failed")
            attempt = OperationAttempt(
                operation_id=operation.id,
                number=number,
                started_at=started,
                finished_at=started + timedelta(milliseconds=duration),
                duration_ms=duration,
                outcome=outcome,
                error_class=None if ok else error_class,
                error_message=None if ok else message,
                error_stack=None if ok else _stack(error_class, message),
                worker="demo:1:worker-1",
            )
            db.session.add(attempt)
            self.attempts.append(attempt)
            started += timedelta(milliseconds=duration, seconds=2**number * self.rng.uniform(1, 3))
        finished = started
        operation.last_attempt_at = finished
        if failures >= 0:
            operation.state, operation.succeeded_at = "succeeded", min(finished, self.now)
        else:
            operation.state, operation.dead_at = "dead", min(finished, self.now)
            operation.error_class, operation.error_message = error_class, message
            operation.error_fingerprint = fingerprint_of(error_class, message)
            operation.error_kind = "permanent" if permanent else "transient"
            operation.error_stack = _stack(error_class, message)
            self.counts["dead letters"] += 1
            if self.rng.random() < 0.25:
                operation.resolved_at = operation.dead_at + timedelta(hours=1)
                operation.resolved_by = "ops@example.com"
                operation.resolution_note = "Customer contacted by support; nothing to resend."
                self.resolved.append(operation)
        self.counts["operations"] += 1
        return operation

    def audit_trail(self) -> None:
        """The audit rows of the demo's resolutions, each after a log-in of its admin that day."""
        db.session.flush()  # the operations' ids
        days = set()
        for operation in sorted(self.resolved, key=lambda op: op.resolved_at):
            at, actor, address = min(operation.resolved_at, self.now), operation.resolved_by, "192.0.2.10"
            if at.date() not in days:
                days.add(at.date())
                login_at = at - timedelta(minutes=self.rng.randint(2, 30))
                db.session.add(
                    AuditEntry(created_at=login_at, actor=actor, action="login", target_type="admin", address=address)
                )
            db.session.add(
                AuditEntry(
                    created_at=at,
                    actor=actor,
                    action="operation.resolve",
                    target_type="operation",
                    target_id=str(operation.id),
                    note=operation.resolution_note,
                    address=address,
                )
            )

    def email_log(self, operation: Operation, purchase: Purchase, customer: Customer, template: str) -> None:
        """One email-log row per attempt of the operation just made, as the email worker writes them."""
        for attempt in self.attempts:
            ok = attempt.outcome == "succeeded"
            db.session.add(
                EmailLog(
                    operation_id=operation.id,
                    purchase_id=purchase.id,
                    attempt=attempt.number,
                    to_address=customer.email,
                    template=template,
                    provider="smtp",
                    status="sent" if ok else "failed",
                    provider_message_id=f"<{self.rng.getrandbits(64):016x}@backstop>" if ok else None,
                    error=attempt.error_message,
                    created_at=attempt.finished_at,
                )
            )
            self.counts["emails logged"] += 1


def _stack(error_class: str, message: str) -> str:
    """A short traceback-shaped text for demo rows (real rows keep the real stack)."""
    frames = traceback.format_list([("webapp/services/engine.py", 130, "_run_claimed", "handler.fn(ctx)")])
    return "Traceback (most recent call last):\n" + "".join(frames) + f"{error_class}: {message}\n"


def _checkout_event(event_id: str, purchase: Purchase) -> dict:
    """A Stripe checkout.session.completed event naming the purchase (as Stripe would send it)."""
    return {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": purchase.stripe_checkout_session_id,
                "object": "checkout.session",
                "payment_status": "paid",
                "client_reference_id": str(purchase.id),
                "metadata": {"purchase_id": str(purchase.id)},
            }
        },
    }
