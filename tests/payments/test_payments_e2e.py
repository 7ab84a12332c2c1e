"""Payments end to end: the app served over real HTTP, a real worker process, both backends."""

from __future__ import annotations

import threading

import requests
from sqlalchemy import text

from tests.conftest import make_app
from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.http_server import serve
from tests.support.polling import wait_for
from webapp.extensions import db
from webapp.models import Operation, StripeEvent
from webapp.services.engine import operations

SECRET = "whsec_e2e_3c9d41f07a"


def worker_env(smtp) -> dict:
    """The worker sends its emails to the test's real SMTP server."""
    return {"SMTP_URL": smtp.url, "EMAIL_PROVIDERS": "smtp", "EMAIL_FROM": "Shop <noreply@shop.example>"}


def deliver(base: str, body: str) -> int:
    """POST a body signed now, over HTTP; return the status."""
    response = requests.post(
        f"{base}/webhooks/stripe",
        data=body.encode(),
        timeout=60,
        headers={"Content-Type": "application/json", "Stripe-Signature": signing.header(body, SECRET)},
    )
    return response.status_code


def op_of(event_id: str) -> Operation:
    """The processing operation of a stored event."""
    return shop.operation(shop.event(event_id).operation_id)


def wait_op(event_id: str, states: set[str], timeout: float = 60) -> Operation:
    """Poll until the event's operation is in one of ``states``."""
    return wait_for(
        lambda: (op := op_of(event_id)).state in states and op,
        timeout=timeout,
        message=f"operation of {event_id} to reach {states}",
    )


def wait_sent(purchase_id: int) -> Operation:
    """Poll until the purchase's one email operation has finished (succeeded or dead)."""

    def finished():
        emails = shop.email_operations(purchase_id)
        return emails and emails[0].state in ("succeeded", "dead") and emails[0]

    return wait_for(finished, timeout=60, message=f"the email of purchase {purchase_id} to finish")


def test_twenty_concurrent_deliveries_complete_once_and_a_replay_changes_nothing(backend, start_worker, smtp_server):
    app = make_app(backend, STRIPE_WEBHOOK_SECRET=SECRET)
    with app.app_context(), serve(app) as base:
        purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
        event = shop.event_for("checkout.session.completed", purchase)
        body = signing.body_of(event)
        start_worker(backend, **worker_env(smtp_server))
        barrier = threading.Barrier(20)
        statuses: list[int] = []

        def hit():
            barrier.wait(timeout=30)
            statuses.append(deliver(base, body))

        threads = [threading.Thread(target=hit) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        assert statuses == [200] * 20
        assert shop.count(StripeEvent) == 1
        done_op = wait_op(event["id"], {"succeeded", "dead"})
        assert done_op.state == "succeeded" and done_op.attempts == 1
        completed = shop.purchase(purchase.id)
        assert completed.status == "completed"
        assert len(shop.operations("stripe.")) == 1
        assert [e.name for e in shop.email_operations(purchase.id)] == ["email.lead_purchase_confirmation"]
        assert wait_sent(purchase.id).state == "succeeded"
        [received] = wait_for(smtp_server.received, message="the confirmation at the SMTP server")
        assert received.rcpt_tos == ("ada@example.com",)
        assert f"#{purchase.id}" in received.message["Subject"]

        # Seed 000, "Test Idempotency": replay the same event; then Stripe sends a second,
        # distinct event for the same session. Neither changes anything.
        assert deliver(base, body) == 200
        twin = shop.event_for(
            "checkout.session.completed",
            purchase,
            session_id=event["data"]["object"]["id"],
            payment_intent_id=event["data"]["object"]["payment_intent"],
        )
        assert deliver(base, signing.body_of(twin)) == 200
        assert wait_op(twin["id"], {"succeeded", "dead"}).state == "succeeded"

        assert len(shop.operations("stripe.")) == 2
        assert op_of(event["id"]).attempts == 1
        after = shop.purchase(purchase.id)
        # (updated_at may move: the email outcome listener records fulfilment on the same row.)
        assert (after.status, after.completed_at, after.stripe_payment_intent_id) == (
            "completed",
            completed.completed_at,
            completed.stripe_payment_intent_id,
        )
        assert len(shop.email_operations(purchase.id)) == 1
        assert shop.event(twin["id"]).processing_state == "processed"
        # Both extra events were fully processed before this point, and neither queued an email:
        # the SMTP server still holds the one confirmation, and the purchase is fulfilled.
        assert len(smtp_server.received()) == 1 and len(smtp_server.offered) == 1
        assert (after.fulfilment_status, after.fulfilled_at is not None) == ("sent", True)
        db.session.remove()
        db.engine.dispose()


FREEZE = {
    "sqlite": [
        "CREATE TRIGGER purchases_frozen BEFORE UPDATE ON purchases "
        "BEGIN SELECT RAISE(ABORT, 'purchases are frozen for maintenance'); END"
    ],
    "postgres": [
        "CREATE FUNCTION purchases_frozen() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'purchases are frozen for maintenance'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER purchases_frozen BEFORE UPDATE ON purchases FOR EACH ROW EXECUTE FUNCTION purchases_frozen()",
    ],
}
THAW = {
    "sqlite": ["DROP TRIGGER purchases_frozen"],
    "postgres": ["DROP TRIGGER purchases_frozen ON purchases", "DROP FUNCTION purchases_frozen()"],
}


def run_sql(statements: list[str]) -> None:
    """Execute DDL and commit."""
    for statement in statements:
        db.session.execute(text(statement))
    db.session.commit()


def test_webhook_processing_that_keeps_failing_dead_letters_then_an_admin_retry_completes_it(
    backend, start_worker, smtp_server
):
    """Seed 000, "Test Webhook Retry": the database refuses the write, the event dead-letters,
    the database recovers, an admin retry (service call) completes the purchase."""
    app = make_app(backend, STRIPE_WEBHOOK_SECRET=SECRET)
    with app.app_context(), serve(app) as base:
        purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
        event = shop.event_for("checkout.session.completed", purchase)
        run_sql(FREEZE[backend.name])
        start_worker(backend, WEBHOOK_RETRY_LADDER="100ms, 100ms, 100ms, 100ms, 100ms", **worker_env(smtp_server))

        assert deliver(base, signing.body_of(event)) == 200
        dead = wait_op(event["id"], {"dead", "succeeded"})

        assert dead.state == "dead" and dead.attempts == 6  # the first attempt and 5 retries
        assert "purchases are frozen for maintenance" in dead.error_message
        assert shop.event(event["id"]).processing_state == "failed"
        assert shop.purchase(purchase.id).status == "pending"
        assert shop.email_operations(purchase.id) == []

        run_sql(THAW[backend.name])
        operations.retry_dead(dead.id, by="admin@example.com")
        retried = wait_op(event["id"], {"succeeded", "dead"})

        assert retried.state == "succeeded" and retried.attempts == 7
        assert shop.purchase(purchase.id).status == "completed"
        assert shop.event(event["id"]).processing_state == "processed"
        assert len(shop.email_operations(purchase.id)) == 1
        assert wait_sent(purchase.id).state == "succeeded"
        assert len(smtp_server.received()) == 1
        db.session.remove()
        db.engine.dispose()
