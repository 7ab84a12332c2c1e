"""What the fault tests send: signed Stripe events and storefront purchases, and the processes
that take them (gunicorn and a worker), ready before the load starts."""

from __future__ import annotations

import requests
from sqlalchemy import func, select

from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.polling import wait_for
from webapp.extensions import db
from webapp.models import Operation, Product

SECRET = "whsec_faults_5d1e0b"
SKU = "lead-faults"
# Answers a client repeats after a pause: 503, and "a request with this key is still running".
AGAIN = (503, "idempotency_key_in_progress")
# Quick emails: no send-rate limit slows the test, one provider unless a test names more.
EMAIL = {
    "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE": "0",
    "EMAIL_RATE_GLOBAL_PER_MINUTE": "0",
    "EMAIL_PROVIDERS": "smtp",
    "EMAIL_FROM": "Shop <noreply@shop.example>",
}


# Bounds a hang only: on a loaded two-core machine (load average 20 in a full parallel run),
# importing the app in a new process took over a minute.
STARTUP_DEADLINE = 180.0


def ready(server, worker) -> None:
    """Wait until gunicorn's worker has imported the app and answers, and the consumer runs."""
    wait_for(lambda: _answers(server.url), timeout=STARTUP_DEADLINE, message="gunicorn to answer")
    worker_started(worker)


def worker_started(worker) -> None:
    """Wait until the Huey consumer runs."""
    wait_for(
        lambda: "Huey consumer started" in worker.output(), timeout=STARTUP_DEADLINE, message="the worker to start"
    )


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=5).status_code > 0
    except requests.RequestException:
        return False


def webhook(base: str, body: str):
    """A sender of one signed Stripe event (signed afresh on every try, as Stripe does)."""

    def send(session):
        return session.post(
            f"{base}/webhooks/stripe",
            data=body.encode(),
            timeout=15,
            headers={"Content-Type": "application/json", "Stripe-Signature": signing.header(body, SECRET)},
        )

    return send


def purchase(base: str, token: str, customer_id: int, key: str):
    """A sender of one credits purchase with its Idempotency-Key."""
    order = {"customer_id": customer_id, "product_sku": SKU, "payment_method": "credits"}

    def send(session):
        return session.post(
            f"{base}/api/purchases",
            json=order,
            timeout=15,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        )

    return send


def work(base: str, token: str, *, events: int, purchases: int, prefix: str = "") -> dict:
    """Rows for ``events`` Stripe events (each completes a pending card purchase) and
    ``purchases`` storefront purchases; the requests to make, interleaved, by name."""
    product = _product()
    event_items, purchase_items = {}, {}
    for n in range(events):
        customer = shop.add_customer(email=f"{prefix}event-{n}@example.com", name=f"Event {n}")
        pending = shop.add_purchase(customer, product)
        event = shop.event_for("checkout.session.completed", pending)
        event_items[f"{prefix}event-{n}"] = webhook(base, signing.body_of(event))
    for n in range(purchases):
        customer = shop.add_customer(email=f"{prefix}buyer-{n}@example.com", name=f"Buyer {n}", balance=2500)
        purchase_items[f"{prefix}purchase-{n}"] = purchase(base, token, customer.id, f"{prefix}faults-{n}")
    # Interleave, so both kinds of request are in flight when something breaks.
    names = [*event_items, *purchase_items]
    order = sorted(names, key=lambda name: int(name.rsplit("-", 1)[1]))
    return {name: {**event_items, **purchase_items}[name] for name in order}


def _product() -> Product:
    found = db.session.execute(select(Product).where(Product.sku == SKU)).scalar_one_or_none()
    db.session.rollback()
    return found or shop.add_product(sku=SKU, price=2500, name="Lead: Faults")


def finished(emails: int) -> bool:
    """Every operation final and at least ``emails`` email operations succeeded."""
    states = db.session.execute(select(Operation.state, func.count()).group_by(Operation.state)).all()
    sent = db.session.execute(
        select(func.count()).select_from(Operation).where(Operation.kind == "email", Operation.state == "succeeded")
    ).scalar_one()
    db.session.rollback()
    unfinished = {state: count for state, count in states if state not in ("succeeded", "dead", "cancelled")}
    return not unfinished and sent >= emails


def states() -> dict[str, int]:
    """Operations by state."""
    counts = dict(db.session.execute(select(Operation.state, func.count()).group_by(Operation.state)).all())
    db.session.rollback()
    return counts
