"""``POST /webhooks/stripe`` and the stripe.* handlers, with bodies signed the way Stripe signs them."""

from __future__ import annotations

import http.client
import time
from datetime import timedelta
from urllib.parse import urlparse

import pytest

from tests.conftest import inside, make_app
from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.http_server import serve
from tests.support.reads import load
from webapp import create_app
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, StripeEvent
from webapp.services.access import tokens
from webapp.services.email.render import render_email
from webapp.services.engine import operations, runner
from webapp.services.payments import intake

OLD, NEW = "whsec_current_5f1c0a7e9b", "whsec_rotated_77ad02c4e1"
LIMIT = 4096


def _app(backend, **config):
    app = make_app(backend, STRIPE_WEBHOOK_SECRET=f"{OLD}, {NEW}", WEBHOOK_MAX_BYTES=LIMIT, **config)
    return app


@pytest.fixture
def hook_app(backend):
    """App on both backends with two webhook secrets (mid-rotation) and a 4 KiB body limit."""
    app = _app(backend)
    with inside(app):
        yield app


@pytest.fixture
def sqlite_hook_app(sqlite_backend):
    """The same on SQLite only, for checks that do not depend on the backend."""
    app = _app(sqlite_backend)
    with inside(app):
        yield app


def post(app, body, signature=None, **headers):
    """POST a raw body to the webhook endpoint."""
    if signature is not None:
        headers["Stripe-Signature"] = signature
    data = body.encode() if isinstance(body, str) else body
    return app.test_client().post("/webhooks/stripe", data=data, headers=headers, content_type="application/json")


def deliver(app, event: dict, secret: str = OLD):
    """Deliver a correctly signed event; return the response."""
    body = signing.body_of(event)
    return post(app, body, signing.header(body, secret))


def process(event_id: str, *, at=None):
    """Run the stored event's operation in this process at time ``at`` (injected clock)."""
    at = at or utcnow()
    row = shop.event(event_id)
    return runner.execute(row.operation_id, now=at, clock=lambda: at)


# --- the signature matrix ---------------------------------------------------------------------


def _checkout_body():
    return signing.body_of(shop.event_for("checkout.session.completed", None))


@pytest.mark.parametrize(
    "case, make_header, status, reason",
    [
        ("valid", lambda b: signing.header(b, OLD), 200, None),
        ("rotated second secret", lambda b: signing.header(b, NEW), 200, None),
        ("several v1, one valid", lambda b: signing.header(b, "whsec_wrong", NEW), 200, None),
        ("wrong secret", lambda b: signing.header(b, "whsec_not_ours"), 400, "invalid_signature"),
        ("stale timestamp", lambda b: signing.header(b, OLD, timestamp=int(time.time()) - 301), 400, "stale_timestamp"),
        ("v0 only", lambda b: signing.header(b, OLD, scheme="v0"), 400, "invalid_signature"),
        ("no timestamp", lambda b: signing.header(b, OLD).split(",", 1)[1], 400, "invalid_signature"),
        ("garbage header", lambda b: "this is not a signature", 400, "invalid_signature"),
        ("non-ASCII signature", lambda b: f"t={int(time.time())},v1=\u00e9{'0' * 63}", 400, "invalid_signature"),
        ("v1 without a value", lambda b: f"t={int(time.time())},v1", 400, "invalid_signature"),
        ("empty header", lambda b: "", 400, "missing_signature"),
        ("missing header", lambda b: None, 400, "missing_signature"),
    ],
)
def test_signature_matrix(sqlite_hook_app, case, make_header, status, reason):
    body = _checkout_body()
    response = post(sqlite_hook_app, body, make_header(body))

    assert response.status_code == status, (case, response.get_json())
    if reason is None:
        assert response.get_json() == {"received": True}
        assert shop.count(StripeEvent) == 1
    else:
        assert response.get_json()["error"] == reason
        assert response.get_json()["message"]
        assert shop.count(StripeEvent) == 0
        assert intake.rejection_counts() == {reason: 1}


def test_tampered_body_is_rejected(sqlite_hook_app):
    body = _checkout_body()
    signature = signing.header(body, OLD)
    tampered = body.replace('"amount_total": 2500', '"amount_total": 1')
    assert tampered != body

    response = post(sqlite_hook_app, tampered, signature)

    assert response.status_code == 400 and response.get_json()["error"] == "invalid_signature"
    assert shop.count(StripeEvent) == 0


@pytest.mark.parametrize(
    "body, message",
    [
        ("not json at all", "not JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ('{"object": "event", "type": "checkout.session.completed", "data": {"object": {}}}', "no valid id"),
        ('{"id": "evt_1", "object": "event", "type": "charge.refunded"}', "no data.object"),
        ('{"id": "evt_1", "object": "charge", "type": "x", "data": {"object": {}}}', "not a Stripe event"),
        ('{"id": "evt_1", "object": "event", "type": "charge.refunded", "data": {"object": "ch_1"}}', "no data.object"),
        ('{"id": "evt_1", "object": "event", "type": "charge.refunded", "data": []}', "no data.object"),
        ('{"id": "evt_\\u0000", "type": "charge.refunded", "data": {"object": {}}}', "no valid id"),
        ('{"id": "evt_\\ud800", "type": "charge.refunded", "data": {"object": {}}}', "no valid id"),
        ('{"id": "evt_1", "type": "charge.\\u0000", "data": {"object": {}}}', "no valid type"),
        ('{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": "ch_\\u0000"}}}', "invalid id"),
        ('{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": 7}}}', "invalid id"),
        pytest.param("[" * 2000 + "]" * 2000, "not JSON", id="nested deeper than the recursion limit"),
    ],
)
def test_signed_body_that_is_not_an_event_is_400(sqlite_hook_app, body, message):
    response = post(sqlite_hook_app, body, signing.header(body, OLD))

    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_payload"
    assert message in response.get_json()["message"]
    assert shop.count(StripeEvent) == 0


def test_missing_secret_configuration_is_503_not_acceptance(sqlite_backend):
    app = make_app(sqlite_backend, STRIPE_WEBHOOK_SECRET="")
    with app.app_context():
        body = _checkout_body()
        response = post(app, body, signing.header(body, OLD))
        assert response.status_code == 503
        assert response.get_json()["error"] == "not_configured"
        db.session.remove()
        db.engine.dispose()


def test_oversize_body_by_content_length_is_413(sqlite_hook_app):
    event = shop.event_for("checkout.session.completed", None)
    event["data"]["object"]["padding"] = "x" * LIMIT
    body = signing.body_of(event)

    response = post(sqlite_hook_app, body, signing.header(body, OLD))

    assert response.status_code == 413
    assert response.get_json()["error"] == "too_large"
    assert shop.count(StripeEvent) == 0
    assert intake.rejection_counts()["too_large"] == 1


def test_oversize_chunked_body_is_413_by_what_was_read(sqlite_hook_app):
    """No Content-Length (chunked transfer encoding): the limit holds on the bytes actually read."""
    event = shop.event_for("checkout.session.completed", None)
    event["data"]["object"]["padding"] = "x" * LIMIT
    body = signing.body_of(event).encode()
    with serve(sqlite_hook_app) as base:
        url = urlparse(base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        conn.request(
            "POST",
            "/webhooks/stripe",
            body=chunks,
            encode_chunked=True,
            headers={
                "Content-Type": "application/json",
                "Transfer-Encoding": "chunked",
                "Stripe-Signature": signing.header(body, OLD),
            },
        )
        response = conn.getresponse()
        status = response.status
        conn.close()

    assert status == 413
    assert shop.count(StripeEvent) == 0


def test_valid_event_is_stored_with_its_operation(hook_app):
    customer = shop.add_customer()
    purchase = shop.add_purchase(customer, shop.add_product())
    event = shop.event_for("checkout.session.completed", purchase)

    response = deliver(hook_app, event)

    assert response.status_code == 200 and response.get_json() == {"received": True}
    row = shop.event(event["id"])
    assert row.type == "checkout.session.completed"
    assert row.object_id == event["data"]["object"]["id"]
    assert row.livemode is False and row.api_version == event["api_version"]
    assert row.processing_state == "received"
    assert row.payload == signing.body_of(event)  # the raw body, byte for byte
    op = shop.operation(row.operation_id)
    assert (op.name, op.kind, op.state) == ("stripe.checkout.session.completed", "webhook", "pending")
    assert op.max_attempts == 6  # 5 retries
    assert op.payload["event_id"] == event["id"]
    assert op.subject == f"purchase:{purchase.id}"
    # The intake did no business work.
    assert shop.purchase(purchase.id).status == "pending"


def test_replayed_event_answers_200_and_adds_nothing(hook_app):
    event = shop.event_for("checkout.session.completed", None)

    first, second = deliver(hook_app, event), deliver(hook_app, event, secret=NEW)

    assert first.status_code == second.status_code == 200
    assert shop.count(StripeEvent) == 1
    assert len(shop.operations("stripe.")) == 1


def test_unhandled_event_types_are_stored_and_ignored(hook_app):
    event = {
        "id": "evt_customer_1",
        "object": "event",
        "type": "customer.created",
        "api_version": "2024-06-20",
        "livemode": False,
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }

    response = deliver(hook_app, event)

    assert response.status_code == 200
    row = shop.event("evt_customer_1")
    assert row.processing_state == "ignored" and row.operation_id is None and row.processed_at is not None
    assert shop.operations("stripe.") == []


def test_database_unavailable_is_503_so_stripe_retries():
    """PostgreSQL that refuses connections: the event is not stored, so it is not acknowledged."""
    app = create_app(
        {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "STRIPE_WEBHOOK_SECRET": OLD,
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        }
    )
    with app.app_context():
        body = _checkout_body()
        response = post(app, body, signing.header(body, OLD))
        assert response.status_code == 503
        assert response.get_json()["error"] == "database_unavailable"
        assert response.headers["Retry-After"]
        db.engine.dispose()


def test_wrong_method_is_json_405(sqlite_hook_app):
    response = sqlite_hook_app.test_client().get("/webhooks/stripe")
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"


# --- handlers, run in-process with an injected clock ---------------------------------------------


def test_checkout_completed_completes_once_and_queues_one_confirmation(hook_app):
    customer = shop.add_customer()
    purchase = shop.add_purchase(customer, shop.add_product(name="Lead: Acme Corp"))
    first = shop.event_for("checkout.session.completed", purchase)
    # A distinct event object for the same session and type must not apply twice.
    second = shop.event_for(
        "checkout.session.completed",
        purchase,
        session_id=first["data"]["object"]["id"],
        payment_intent_id=first["data"]["object"]["payment_intent"],
    )
    assert deliver(hook_app, first).status_code == deliver(hook_app, second).status_code == 200
    at = utcnow()

    results = [process(first["id"], at=at), process(second["id"], at=at)]

    assert [r.outcome for r in results] == ["succeeded", "succeeded"]
    done = shop.purchase(purchase.id)
    assert done.status == "completed" and done.completed_at == at
    assert done.stripe_payment_intent_id == first["data"]["object"]["payment_intent"]
    assert done.stripe_checkout_session_id == first["data"]["object"]["id"]
    emails = shop.email_operations(purchase.id)
    assert [e.name for e in emails] == ["email.lead_purchase_confirmation"]
    assert emails[0].payload["to"] == "ada@example.com"
    assert emails[0].payload["context"]["product_name"] == "Lead: Acme Corp"
    assert emails[0].payload["context"]["amount"] == "$25.00"
    assert shop.event(first["id"]).processing_state == shop.event(second["id"]).processing_state == "processed"
    # Each operation keeps what it did: the second event was a no-op, and says so.
    assert _result(first["id"]) == {
        "event_id": first["id"],
        "event_type": "checkout.session.completed",
        "outcome": "completed",
        "event_state": "processed",
        "purchase_id": purchase.id,
        "confirmation_queued": True,
    }
    assert _result(second["id"])["already_completed"] is True
    assert _result(second["id"])["outcome"] == "already_completed"


def _result(event_id: str) -> dict | None:
    """The stored result of a Stripe event's operation."""
    return load(shop.event(event_id).operation_id).result


def test_credit_pack_adds_credits_exactly_once(hook_app):
    customer = shop.add_customer(balance=100)
    pack = shop.add_product(sku="credits-50", kind="credits", price=4500, credits=5000)
    purchase = shop.add_purchase(customer, pack)
    events = [shop.event_for("checkout.session.completed", purchase) for _ in range(2)]
    for event in events:
        deliver(hook_app, event)

    for event in events:
        process(event["id"])

    assert shop.customer(customer.id).credit_balance_cents == 5100
    assert [e.name for e in shop.email_operations(purchase.id)] == ["email.credit_purchase_confirmation"]
    assert [_result(event["id"]).get("credits_granted") for event in events] == [5000, None]


def test_unpaid_completion_waits_for_async_payment(hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    completed = shop.event_for("checkout.session.completed", purchase)
    completed["data"]["object"]["payment_status"] = "unpaid"
    succeeded = shop.event_for("checkout.session.async_payment_succeeded", purchase)
    deliver(hook_app, completed)
    deliver(hook_app, succeeded)

    process(completed["id"])
    assert shop.purchase(purchase.id).status == "pending"
    assert shop.email_operations(purchase.id) == []

    process(succeeded["id"])
    assert shop.purchase(purchase.id).status == "completed"
    assert len(shop.email_operations(purchase.id)) == 1


@pytest.mark.parametrize(
    "event_type, status, reason",
    [
        ("checkout.session.expired", "expired", "the checkout session expired before payment"),
        ("checkout.session.async_payment_failed", "failed", "the delayed payment failed"),
        ("payment_intent.payment_failed", "failed", "Your card was declined."),
    ],
)
def test_failed_payments_mark_the_purchase_and_tell_the_customer(hook_app, event_type, status, reason):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    event = shop.event_for(event_type, purchase)
    deliver(hook_app, event)

    assert process(event["id"]).outcome == "succeeded"

    failed = shop.purchase(purchase.id)
    assert (failed.status, failed.failure_reason) == (status, reason)
    emails = shop.email_operations(purchase.id)
    assert [e.name for e in emails] == ["email.payment_failed"]
    assert emails[0].payload["context"]["failure_reason"] == reason


def test_declined_card_then_successful_retry_completes(hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    declined = shop.event_for("payment_intent.payment_failed", purchase)
    paid = shop.event_for("checkout.session.completed", purchase, payment_intent_id=declined["data"]["object"]["id"])
    for event in (declined, paid):
        deliver(hook_app, event)
        process(event["id"])

    assert shop.purchase(purchase.id).status == "completed"
    assert shop.purchase(purchase.id).failure_reason is None


def test_partial_then_full_refund_each_notified_once(hook_app):
    purchase = shop.add_purchase(
        shop.add_customer(),
        shop.add_product(price=2500),
        status="completed",
        stripe_payment_intent_id="pi_test_refunds",
        completed_at=utcnow(),
    )
    partial = shop.event_for("charge.refunded", purchase, amount_refunded=1000, payment_intent_id="pi_test_refunds")
    stale_copy = shop.event_for("charge.refunded", purchase, amount_refunded=1000, payment_intent_id="pi_test_refunds")
    full = shop.event_for("charge.refunded", purchase, amount_refunded=2500, payment_intent_id="pi_test_refunds")
    for event in (partial, stale_copy, full):
        deliver(hook_app, event)

    process(partial["id"])
    state = shop.purchase(purchase.id)
    assert (state.status, state.refunded_cents) == ("partially_refunded", 1000)
    assert state.refunded_at is not None

    process(stale_copy["id"])  # a second event with the same cumulative amount changes nothing
    assert len(shop.email_operations(purchase.id)) == 1
    assert _result(partial["id"])["refunded_cents"] == 1000
    assert _result(stale_copy["id"])["already_refunded"] is True

    process(full["id"])
    state = shop.purchase(purchase.id)
    assert (state.status, state.refunded_cents) == ("refunded", 2500)
    emails = shop.email_operations(purchase.id)
    assert [e.name for e in emails] == ["email.refund_notification"] * 2
    assert [e.payload["context"]["refunded_amount"] for e in emails] == ["$10.00", "$25.00"]


def _refund_events(hook_app, purchase, *amounts):
    """Deliver one charge.refunded per cumulative amount; return their ids."""
    ids = []
    for amount in amounts:
        event = shop.event_for("charge.refunded", purchase, amount_refunded=amount, payment_intent_id="pi_pack")
        deliver(hook_app, event)
        ids.append(event["id"])
    return ids


def test_credit_pack_refund_takes_back_the_refunded_share_of_its_credits(hook_app):
    customer = shop.add_customer(balance=0)
    pack = shop.add_product(sku="credits-50", kind="credits", price=4500, credits=5000)
    purchase = shop.add_purchase(customer, pack)
    paid = shop.event_for("checkout.session.completed", purchase, payment_intent_id="pi_pack")
    deliver(hook_app, paid)
    process(paid["id"])
    assert shop.customer(customer.id).credit_balance_cents == 5000
    partial, full, repeat = _refund_events(hook_app, purchase, 1500, 4500, 4500)

    process(partial)
    assert shop.customer(customer.id).credit_balance_cents == 5000 - 1666  # a third, rounded down
    process(full)
    process(repeat)  # the same cumulative amount again: nothing more is taken

    assert shop.customer(customer.id).credit_balance_cents == 0
    refunds = [e for e in shop.email_operations(purchase.id) if e.name == "email.refund_notification"]
    assert [
        (e.payload["context"]["credits_removed"], e.payload["context"]["credits_already_spent"]) for e in refunds
    ] == [(1666, 0), (3334, 0)]


def test_credit_pack_refund_never_takes_the_balance_below_zero(hook_app):
    customer = shop.add_customer(balance=0)
    pack = shop.add_product(sku="credits-50", kind="credits", price=4500, credits=5000)
    purchase = shop.add_purchase(customer, pack)
    paid = shop.event_for("checkout.session.completed", purchase, payment_intent_id="pi_pack")
    deliver(hook_app, paid)
    process(paid["id"])
    db.session.execute(shop.Customer.__table__.update().values(credit_balance_cents=1000))  # 4000 spent
    db.session.commit()
    [full] = _refund_events(hook_app, purchase, 4500)

    assert process(full).outcome == "succeeded"

    assert shop.customer(customer.id).credit_balance_cents == 0
    [refund] = [e for e in shop.email_operations(purchase.id) if e.name == "email.refund_notification"]
    context = refund.payload["context"]
    assert (context["credits_removed"], context["credits_already_spent"]) == (1000, 4000)
    rendered = render_email("refund_notification", context, to="ada@example.com", purchase_id=purchase.id)
    assert "$10.00 in credits were removed from your balance" in rendered.text
    assert "credits you had already used are not affected" in rendered.html


def test_lead_refund_leaves_the_credit_balance_alone(hook_app):
    customer = shop.add_customer(balance=700)
    purchase = shop.add_purchase(
        customer,
        shop.add_product(price=2500),
        status="completed",
        stripe_payment_intent_id="pi_pack",
        completed_at=utcnow(),
    )
    [full] = _refund_events(hook_app, purchase, 2500)

    process(full)

    assert shop.purchase(purchase.id).status == "refunded"
    assert shop.customer(customer.id).credit_balance_cents == 700
    [refund] = shop.email_operations(purchase.id)
    assert refund.payload["context"]["credits_removed"] == 0


def test_refund_found_by_payment_intent_without_metadata(hook_app):
    purchase = shop.add_purchase(
        shop.add_customer(),
        shop.add_product(),
        status="completed",
        stripe_payment_intent_id="pi_test_lookup",
        completed_at=utcnow(),
    )
    event = shop.event_for("charge.refunded", None, payment_intent_id="pi_test_lookup")
    event["data"]["object"]["amount"] = event["data"]["object"]["amount_refunded"] = 2500
    deliver(hook_app, event)

    process(event["id"])

    assert shop.purchase(purchase.id).status == "refunded"


def test_refund_before_completion_defers_then_applies(hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    refund = shop.event_for("charge.refunded", purchase)
    completion = shop.event_for(
        "checkout.session.completed", purchase, payment_intent_id=refund["data"]["object"]["payment_intent"]
    )
    deliver(hook_app, refund)
    deliver(hook_app, completion)
    t0 = utcnow()

    early = process(refund["id"], at=t0)

    assert early.outcome == "deferred"
    assert early.due_at == t0 + timedelta(seconds=30)
    refund_op = shop.operation(shop.event(refund["id"]).operation_id)
    assert refund_op.state == "retrying" and refund_op.attempts == 0  # a deferral uses no attempt
    assert "waiting for the purchase" in refund_op.error_message
    assert shop.purchase(purchase.id).status == "pending"

    process(completion["id"], at=t0 + timedelta(seconds=5))
    late = process(refund["id"], at=t0 + timedelta(seconds=31))

    assert late.outcome == "succeeded"
    assert shop.purchase(purchase.id).status == "refunded"
    assert sorted(e.name for e in shop.email_operations(purchase.id)) == [
        "email.lead_purchase_confirmation",
        "email.refund_notification",
    ]


def test_refund_that_never_becomes_applicable_dead_letters_with_a_reason(hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    refund = shop.event_for("charge.refunded", purchase)
    deliver(hook_app, refund)
    received = shop.event(refund["id"]).received_at

    assert process(refund["id"], at=received + timedelta(minutes=59)).outcome == "deferred"
    result = process(refund["id"], at=received + timedelta(minutes=61))

    assert result.outcome == "dead"
    op = shop.operation(shop.event(refund["id"]).operation_id)
    assert op.error_kind == "permanent"
    assert f"refund for purchase {purchase.id} arrived while it is pending" in op.error_message
    assert "61 minutes" in op.error_message
    assert shop.event(refund["id"]).processing_state == "failed"


def test_unknown_purchase_dead_letters_and_foreign_sessions_are_ignored(hook_app):
    unknown = shop.event_for("checkout.session.completed", None)
    unknown["data"]["object"]["metadata"] = {"purchase_id": "987654"}
    foreign = shop.event_for("checkout.session.completed", None)  # no purchase id: not ours
    deliver(hook_app, unknown)
    deliver(hook_app, foreign)

    assert process(unknown["id"]).outcome == "dead"
    assert process(foreign["id"]).outcome == "succeeded"

    op = shop.operation(shop.event(unknown["id"]).operation_id)
    assert "names purchase 987654, which does not exist" in op.error_message
    assert shop.event(foreign["id"]).processing_state == "ignored"


def test_dead_webhook_processing_is_recovered_by_an_admin_retry(hook_app):
    """Seed 000: processing fails until dead; the cause is fixed; an admin retry processes it."""
    event = shop.event_for("checkout.session.completed", None)
    event["data"]["object"]["metadata"] = {"purchase_id": "4242"}
    deliver(hook_app, event)
    op_id = shop.event(event["id"]).operation_id
    assert process(event["id"]).outcome == "dead"
    assert shop.event(event["id"]).processing_state == "failed"
    # The missing purchase turns up (say, restored from a backup).
    customer, product = shop.add_customer(), shop.add_product()
    db.session.add(
        shop.Purchase(
            id=4242,
            customer_id=customer.id,
            product_id=product.id,
            payment_method="card",
            status="pending",
            amount_cents=2500,
            currency="usd",
        )
    )
    db.session.commit()

    operations.retry_dead(op_id, by="admin@example.com")
    assert process(event["id"]).outcome == "succeeded"

    assert shop.purchase(4242).status == "completed"
    assert shop.event(event["id"]).processing_state == "processed"
    assert len(shop.email_operations(4242)) == 1


def _store_raw_event(event_id: str, event_type: str, payload: str) -> int:
    """Store an event row and its operation directly, as an older intake or a hand fix might have."""
    now = utcnow()
    db.session.add(
        StripeEvent(id=event_id, type=event_type, payload=payload, received_at=now, processing_state="received")
    )
    operation = operations.create_operation(
        f"stripe.{event_type}",
        {"event_id": event_id, "type": event_type},
        idempotency_key=f"stripe-event:{event_id}",
        now=now,
    )
    db.session.flush()
    db.session.get(StripeEvent, event_id).operation_id = operation.id
    db.session.commit()
    return operation.id


@pytest.mark.parametrize(
    "event_type",
    ["checkout.session.completed", "checkout.session.expired", "payment_intent.payment_failed", "charge.refunded"],
)
@pytest.mark.parametrize(
    "payload, reason",
    [
        ('{"id": "evt_x", "object": "event", "type": "T"}', "has no data.object"),
        ('{"id": "evt_x", "object": "event", "type": "T", "data": {"object": null}}', "has no data.object"),
        ('{"id": "evt_x", "object": "event", "type": "T", "data": "oops"}', "has no data.object"),
        ("[1, 2]", "has no data.object"),
        ("{not json", "is not valid JSON"),
        ("", "has no body"),
    ],
)
def test_stored_event_without_an_object_dead_letters_with_a_reason(hook_app, event_type, payload, reason):
    """Signed-but-malformed shapes that got stored anyway never raise KeyError inside a handler:
    the first attempt dead-letters (permanent, nothing to retry) with a sentence an admin can read."""
    event_id = f"evt_malformed_{abs(hash((event_type, payload))) % 10**8}"
    operation_id = _store_raw_event(event_id, event_type, payload.replace('"T"', f'"{event_type}"'))

    result = runner.execute(operation_id)

    assert result.outcome == "dead"
    op = shop.operation(operation_id)
    assert op.attempts == 1 and op.error_kind == "permanent"
    assert op.error_class != "KeyError"
    assert f"stored Stripe event {event_id}" in op.error_message and reason in op.error_message
    assert shop.event(event_id).processing_state == "failed"


@pytest.mark.parametrize("purchase_id", ["12.5", "-3", "\u0661\u0662", "99999999999999999999999", "abc"])
def test_metadata_purchase_id_that_is_not_an_id_dead_letters_with_a_reason(hook_app, purchase_id):
    event = shop.event_for("checkout.session.completed", None)
    event["data"]["object"]["metadata"] = {"purchase_id": purchase_id.encode().decode("unicode_escape")}
    assert deliver(hook_app, event).status_code == 200

    assert process(event["id"]).outcome == "dead"

    op = shop.operation(shop.event(event["id"]).operation_id)
    assert op.attempts == 1 and op.error_kind == "permanent"
    assert "which is not a purchase id" in op.error_message or "which does not exist" in op.error_message


def test_rejection_counts_accumulate_by_reason(sqlite_hook_app):
    body = _checkout_body()
    post(sqlite_hook_app, body, None)
    post(sqlite_hook_app, body, None)
    post(sqlite_hook_app, body, signing.header(body, "whsec_nope"))

    assert intake.rejection_counts() == {"missing_signature": 2, "invalid_signature": 1}
    assert db.session.query(Operation).count() == 0
    db.session.rollback()


# --- the CLI ------------------------------------------------------------------------------------


def test_send_event_cli_signs_like_stripe_and_the_app_accepts_it(sqlite_hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    cli = sqlite_hook_app.test_cli_runner()
    with serve(sqlite_hook_app) as base:
        sent = cli.invoke(
            args=[
                "stripe",
                "send-event",
                "checkout.session.completed",
                "--url",
                f"{base}/webhooks/stripe",
                "--purchase-id",
                str(purchase.id),
            ]
        )
        forged = cli.invoke(
            args=[
                "stripe",
                "send-event",
                "charge.refunded",
                "--url",
                f"{base}/webhooks/stripe",
                "--purchase-id",
                str(purchase.id),
                "--secret",
                "whsec_not_ours",
            ]
        )

    assert sent.exit_code == 0, sent.output
    assert "HTTP 200" in sent.output
    stored = shop.operations("stripe.checkout.session.completed")
    assert len(stored) == 1 and stored[0].subject == f"purchase:{purchase.id}"
    assert runner.execute(stored[0].id).outcome == "succeeded"
    assert shop.purchase(purchase.id).status == "completed"
    assert forged.exit_code == 1 and "HTTP 400" in forged.output


def test_token_and_product_commands(sqlite_hook_app):
    cli = sqlite_hook_app.test_cli_runner()

    created = cli.invoke(args=["tokens", "create", "--scope", "storefront", "--name", "shop"])
    raw = created.output.strip().splitlines()[-1]
    listed = cli.invoke(args=["tokens", "list"])
    assert tokens.authenticate(raw, "storefront") is not None
    assert raw not in listed.output and raw[:12] in listed.output
    token_id = tokens.authenticate(raw, "storefront").id
    revoked = cli.invoke(args=["tokens", "revoke", str(token_id)])
    assert revoked.exit_code == 0 and tokens.authenticate(raw, "storefront") is None

    added = cli.invoke(
        args=[
            "products",
            "add",
            "credits-50",
            "--name",
            "50 credits",
            "--kind",
            "credits",
            "--price-cents",
            "4500",
            "--credit-cents",
            "5000",
        ]
    )
    duplicate = cli.invoke(
        args=[
            "products",
            "add",
            "credits-50",
            "--name",
            "again",
            "--kind",
            "credits",
            "--price-cents",
            "4500",
            "--credit-cents",
            "5000",
        ]
    )
    bad = cli.invoke(args=["products", "add", "pack", "--name", "x", "--kind", "credits", "--price-cents", "0"])
    cli.invoke(args=["products", "deactivate", "credits-50"])
    products = cli.invoke(args=["products", "list"])

    assert added.exit_code == 0
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    assert bad.exit_code == 1 and "price_cents" in bad.output and "credit_cents_granted" in bad.output
    assert "credits-50" in products.output and "inactive" in products.output


# --- ids and text no database can store (issue 13, row 10) --------------------------------------


def _with(event: dict, path: str, value) -> dict:
    """``event`` with the field at dotted ``path`` under ``data.object`` set to ``value``."""
    target = event["data"]["object"]
    *parents, last = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return event


@pytest.mark.parametrize(
    "event_type, path, value, named",
    [
        ("checkout.session.completed", "payment_intent", "pi_\ud800", "data.object.payment_intent"),
        ("checkout.session.completed", "payment_intent", {"id": "pi_\udfff"}, "data.object.payment_intent"),
        ("checkout.session.completed", "payment_intent", "pi_\x00", "data.object.payment_intent"),
        ("checkout.session.completed", "payment_intent", "pi_" + "x" * 300, "data.object.payment_intent"),
        ("charge.refunded", "refunds.data", [{"id": "re_1"}, {"id": "re_\u00e9"}], "data.object.refunds.data[1].id"),
        (
            "payment_intent.payment_failed",
            "last_payment_error.message",
            "declined \ud800",
            "last_payment_error.message",
        ),
    ],
)
def test_a_signed_event_with_an_id_or_text_no_database_can_store_is_400_and_not_stored(
    hook_app, event_type, path, value, named
):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    response = deliver(hook_app, _with(shop.event_for(event_type, purchase), path, value))

    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_payload")
    assert named in response.get_json()["message"]
    assert shop.count(StripeEvent) == 0 and shop.count(Operation) == 0


def test_a_decline_reason_holding_a_nul_is_stored_readable_on_the_first_attempt(hook_app):
    purchase = shop.add_purchase(shop.add_customer(), shop.add_product())
    event = _with(
        shop.event_for("payment_intent.payment_failed", purchase),
        "last_payment_error.message",
        "Declined\x00 (do_not_honor)",
    )
    assert deliver(hook_app, event).status_code == 200

    assert process(event["id"]).outcome == "succeeded"
    assert shop.purchase(purchase.id).failure_reason == "Declined\ufffd (do_not_honor)"
