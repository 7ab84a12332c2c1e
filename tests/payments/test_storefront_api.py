"""The storefront API over HTTP, with a real local HTTP server standing in for Stripe's API."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs

import pytest
from werkzeug import Response

from tests.conftest import inside, make_app
from tests.support import shop
from webapp.extensions import db
from webapp.models import Customer, IdempotencyRecord, Purchase
from webapp.services.access import tokens
from webapp.services.payments.errors import CHECKOUT_FAILED_MESSAGE

SESSIONS = "/v1/checkout/sessions"


@pytest.fixture
def api_app(backend, httpserver):
    """App on both backends whose Stripe client talks to the local stand-in."""
    app = make_app(
        backend,
        STRIPE_SECRET_KEY="sk_test_backstop_51",
        STRIPE_MAX_NETWORK_RETRIES=0,
        STRIPE_TIMEOUT_SECONDS=1.0,
        STRIPE_API_BASE=httpserver.url_for("/").rstrip("/"),
        PUBLIC_BASE_URL="https://shop.example.com",
    )
    with inside(app):
        yield app


@pytest.fixture
def client(api_app):
    """A test client that sends a valid storefront bearer token."""
    raw = tokens.create_token("shop", "storefront").raw
    return Api(api_app.test_client(), raw)


class Api:
    """JSON calls with the bearer token."""

    def __init__(self, client, token):
        self.client, self.token = client, token

    def post(self, path, json=None, *, headers=None, **kwargs):
        """POST JSON with the token."""
        return self.client.post(
            path, json=json, headers={"Authorization": f"Bearer {self.token}", **(headers or {})}, **kwargs
        )

    def get(self, path, **kwargs):
        """GET with the token."""
        return self.client.get(path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs)


def session_answer(session_id="cs_test_a1b2c3"):
    """What Stripe answers for a created Checkout Session (abridged)."""
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "payment",
        "status": "open",
        "payment_status": "unpaid",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}",
    }


# --- authentication -----------------------------------------------------------------------------


def test_requests_without_a_valid_storefront_token_are_401(api_app):
    app_client = api_app.test_client()
    admin_token = tokens.create_token("ops", "admin").raw
    revoked = tokens.create_token("old shop", "storefront")
    tokens.revoke_token(revoked.token.id)

    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {revoked.raw}"},
        {"Authorization": f"Bearer {admin_token}"},
        {"Authorization": f"Bearer {revoked.raw}"},
    ):
        response = app_client.post("/api/customers", json={"email": "a@example.com", "name": "A"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.get_json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert shop.count(Customer) == 0


def test_tokens_are_stored_hashed_and_record_use(client):
    stored = tokens.list_tokens()[0]
    assert client.token not in (stored.token_hash, stored.prefix)
    assert stored.token_hash == tokens.hash_token(client.token)
    assert stored.last_used_at is None

    client.get("/api/purchases/1")

    assert tokens.list_tokens()[0].last_used_at is not None


# --- customers ----------------------------------------------------------------------------------


def test_create_customer_queues_a_welcome_email(client):
    response = client.post("/api/customers", json={"email": "Grace@Example.COM", "name": " Grace Hopper "})

    assert response.status_code == 201
    body = response.get_json()
    assert body["email"] == "Grace@example.com" and body["name"] == "Grace Hopper"
    assert body["credit_balance_cents"] == 0
    welcome = shop.operations("email.welcome")
    assert len(welcome) == 1
    assert welcome[0].payload["to"] == "Grace@example.com"
    assert welcome[0].payload["context"]["customer_name"] == "Grace Hopper"


def test_duplicate_customer_email_is_409(client):
    client.post("/api/customers", json={"email": "ada@example.com", "name": "Ada"})

    response = client.post("/api/customers", json={"email": "ADA@example.com", "name": "Ada again"})

    assert response.status_code == 409
    assert response.get_json()["error"] == "customer_exists"
    assert shop.count(Customer) == 1
    assert len(shop.operations("email.welcome")) == 1


@pytest.mark.parametrize(
    "payload, fields",
    [
        ({}, {"email", "name"}),
        ({"email": "not-an-address", "name": "X"}, {"email"}),
        ({"email": "x@example.com", "name": ""}, {"name"}),
        ({"email": 42, "name": ["x"]}, {"email", "name"}),
        ({"email": "x@example.com", "name": "n" * 201}, {"name"}),
    ],
)
def test_invalid_customer_fields_are_422_per_field(client, payload, fields):
    response = client.post("/api/customers", json=payload)

    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_failed" and set(body["fields"]) == fields
    assert shop.count(Customer) == 0


def test_bad_bodies_get_precise_4xx(client):
    auth = {"Authorization": f"Bearer {client.token}"}
    raw = client.client

    form = raw.post(
        "/api/customers", data="email=a@example.com", headers=auth, content_type="application/x-www-form-urlencoded"
    )
    broken = raw.post("/api/customers", data='{"email": ', headers=auth, content_type="application/json")
    array = raw.post("/api/customers", data="[]", headers=auth, content_type="application/json")
    wrong_method = raw.delete("/api/customers", headers=auth)

    assert (form.status_code, form.get_json()["error"]) == (415, "unsupported_media_type")
    assert (broken.status_code, broken.get_json()["error"]) == (400, "malformed_json")
    assert (array.status_code, array.get_json()["error"]) == (400, "malformed_json")
    assert (wrong_method.status_code, wrong_method.get_json()["error"]) == (405, "method_not_allowed")
    assert wrong_method.headers["Allow"] == "POST"


def test_json_nested_past_the_recursion_limit_is_400_not_500(client):
    deep = "[" * 5000 + "]" * 5000

    for path in ("/api/customers", "/api/purchases"):
        response = client.client.post(
            path, data=deep, content_type="application/json", headers={"Authorization": f"Bearer {client.token}"}
        )
        assert (response.status_code, response.get_json()["error"]) == (400, "malformed_json")


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/customers", '{"email": "ada@example.com", "name": "Ada \\ud800"}', "name"),
        ("/api/customers", '{"email": "ada@example.com", "name": "Ada", "\\udc00": 1}', "\\udc00"),
        (
            "/api/purchases",
            '{"customer_id": 1, "product_sku": "lead-\\ud800", "payment_method": "credits"}',
            "product_sku",
        ),
        ("/api/customers", '{"email": "ada@example.com", "name": "Ada \\u0000"}', "name"),
        (
            "/api/purchases",
            '{"customer_id": 1, "product_sku": "lead-\\u0000", "payment_method": "credits"}',
            "product_sku",
        ),
    ],
)
def test_text_no_database_can_store_is_422_naming_the_field(client, path, body, field):
    """Lone surrogates (no UTF-8 encoding) and NUL (PostgreSQL refuses it): 422, never 500 or 503."""
    shop.add_customer()
    response = client.client.post(
        path, data=body, content_type="application/json", headers={"Authorization": f"Bearer {client.token}"}
    )

    assert (response.status_code, response.get_json()["error"]) == (422, "validation_failed")
    assert set(response.get_json()["fields"]) == {field}
    assert shop.count(Customer) == 1 and shop.count(Purchase) == 0


# --- purchases: validation and credits ----------------------------------------------------------


def test_purchase_validation_reports_every_field(client):
    shop.add_product(sku="retired", active=False)
    shop.add_product(sku="credits-10", kind="credits", price=900, credits=1000)
    customer = shop.add_customer()

    empty = client.post("/api/purchases", json={})
    wrong = client.post("/api/purchases", json={"customer_id": "7", "product_sku": "retired", "payment_method": "cash"})
    missing = client.post("/api/purchases", json={"customer_id": 999, "product_sku": "nope", "payment_method": "card"})
    pack_with_credits = client.post(
        "/api/purchases", json={"customer_id": customer.id, "product_sku": "credits-10", "payment_method": "credits"}
    )

    assert empty.status_code == wrong.status_code == missing.status_code == pack_with_credits.status_code == 422
    assert set(empty.get_json()["fields"]) == {"customer_id", "product_sku", "payment_method"}
    assert wrong.get_json()["fields"] == {
        "customer_id": "must be a positive integer",
        "product_sku": "product 'retired' is no longer sold",
        "payment_method": "must be one of card, credits",
    }
    assert missing.get_json()["fields"] == {
        "customer_id": "no customer has id 999",
        "product_sku": "no product has sku 'nope'",
    }
    assert set(pack_with_credits.get_json()["fields"]) == {"payment_method"}
    assert shop.count(Purchase) == 0


def test_credits_purchase_deducts_completes_and_confirms_in_one_go(client):
    customer = shop.add_customer(balance=3000)
    shop.add_product(sku="lead-1", price=2500)

    response = client.post(
        "/api/purchases", json={"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}
    )

    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "completed" and body["payment_method"] == "credits"
    assert body["amount_cents"] == 2500 and body["completed_at"] and body["fulfilment_status"] == "pending"
    assert shop.customer(customer.id).credit_balance_cents == 500
    assert [e.name for e in shop.email_operations(body["id"])] == ["email.lead_purchase_confirmation"]


def test_short_balance_is_409_and_changes_nothing(client):
    customer = shop.add_customer(balance=3000)
    shop.add_product(sku="lead-1", price=2500)
    order = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}

    first, second = client.post("/api/purchases", json=order), client.post("/api/purchases", json=order)

    assert first.status_code == 201
    assert second.status_code == 409 and second.get_json()["error"] == "insufficient_credits"
    assert shop.customer(customer.id).credit_balance_cents == 500
    assert shop.count(Purchase) == 1


def test_concurrent_credit_purchases_never_overdraw(api_app, client):
    customer = shop.add_customer(balance=5000)
    shop.add_product(sku="lead-1", price=2000)
    order = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}
    statuses = []

    def buy():
        with api_app.app_context():
            statuses.append(client.post("/api/purchases", json=order).status_code)
            db.session.remove()

    threads = [threading.Thread(target=buy) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(statuses) == [201, 201, 409, 409, 409, 409]
    assert shop.customer(customer.id).credit_balance_cents == 1000


# --- purchases by card, through the Stripe stand-in ---------------------------------------------


def test_card_purchase_creates_a_checkout_session(client, httpserver):
    customer = shop.add_customer()
    shop.add_product(sku="lead-1", price=2500, name="Lead: Acme")
    httpserver.expect_request(SESSIONS, method="POST").respond_with_json(session_answer())

    response = client.post(
        "/api/purchases", json={"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}
    )

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "pending"
    assert body["checkout_url"] == "https://checkout.stripe.com/c/pay/cs_test_a1b2c3"
    stored = shop.purchase(body["id"])
    assert stored.stripe_checkout_session_id == "cs_test_a1b2c3"
    ((request, _),) = httpserver.log
    assert request.headers["Authorization"] == "Bearer sk_test_backstop_51"
    assert request.headers["Idempotency-Key"] == f"backstop-checkout-purchase-{body['id']}"
    form = parse_qs(request.get_data(as_text=True))
    assert form["metadata[purchase_id]"] == [str(body["id"])]
    assert form["payment_intent_data[metadata][purchase_id]"] == [str(body["id"])]
    assert form["line_items[0][price_data][unit_amount]"] == ["2500"]
    assert form["line_items[0][price_data][product_data][name]"] == ["Lead: Acme"]
    assert form["customer_email"] == ["ada@example.com"]
    assert form["success_url"] == [f"https://shop.example.com/checkout/success?purchase_id={body['id']}"]
    assert shop.email_operations(body["id"]) == []  # nothing to confirm until Stripe says it is paid


@pytest.mark.parametrize(
    "status, error, expected",
    [
        (
            400,
            {"type": "invalid_request_error", "code": "parameter_invalid", "message": "Invalid currency: usd"},
            "InvalidRequestError HTTP 400 parameter_invalid: Invalid currency: usd",
        ),
        (
            401,
            {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****_51"},
            "AuthenticationError HTTP 401",
        ),
        (500, {"type": "api_error", "message": "Something went wrong on Stripe's end."}, "APIError HTTP 500"),
    ],
)
def test_stripe_error_answers_502_and_fails_the_purchase(client, httpserver, status, error, expected):
    customer = shop.add_customer()
    shop.add_product(sku="lead-1")
    httpserver.expect_request(SESSIONS, method="POST").respond_with_json({"error": error}, status=status)

    response = client.post(
        "/api/purchases", json={"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}
    )

    assert response.status_code == 502
    body = response.get_json()
    # The client gets a stable code and a generic message: nothing of what the SDK said.
    assert body == {"error": "stripe_error", "message": CHECKOUT_FAILED_MESSAGE, "purchase_id": body["purchase_id"]}
    assert "sk_test_backstop_51" not in response.get_data(as_text=True)
    failed = shop.purchase(body["purchase_id"])
    # The details are on the purchase, for admins (and in the log).
    assert failed.status == "failed" and failed.failure_reason.startswith(expected)
    read = client.get(f"/api/purchases/{body['purchase_id']}").get_json()
    assert read["status"] == "failed" and read["failure_reason"] == CHECKOUT_FAILED_MESSAGE
    admin = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    details = client.client.get(f"/api/admin/purchases/{body['purchase_id']}", headers=admin)
    assert details.status_code == 200 and details.get_json()["failure_reason"].startswith(expected)


def test_stripe_timeout_answers_502(client, httpserver):
    customer = shop.add_customer()
    shop.add_product(sku="lead-1")
    release = threading.Event()

    def hang(request):
        release.wait(10)  # longer than the client's 1 s read timeout
        return Response("{}", status=200, content_type="application/json")

    httpserver.expect_request(SESSIONS, method="POST").respond_with_handler(hang)
    try:
        response = client.post(
            "/api/purchases", json={"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}
        )
    finally:
        release.set()

    assert response.status_code == 502
    assert response.get_json()["message"] == CHECKOUT_FAILED_MESSAGE
    assert "127.0.0.1" not in response.get_data(as_text=True)
    failed = shop.purchase(response.get_json()["purchase_id"])
    assert failed.status == "failed" and failed.failure_reason.startswith("APIConnectionError")


def test_card_payments_unconfigured_is_503_and_writes_nothing(backend):
    app = make_app(backend, STRIPE_SECRET_KEY=None)
    with app.app_context():
        raw = tokens.create_token("shop", "storefront").raw
        customer = shop.add_customer()
        shop.add_product(sku="lead-1")
        response = app.test_client().post(
            "/api/purchases",
            json={"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"},
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert response.status_code == 503 and response.get_json()["error"] == "payments_unavailable"
        assert shop.count(Purchase) == 0
        db.session.remove()
        db.engine.dispose()


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(client, httpserver):
    customer = shop.add_customer(balance=10_000)
    shop.add_product(sku="lead-1", price=2500)
    httpserver.expect_request(SESSIONS, method="POST").respond_with_json(session_answer())
    credits = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}
    card = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}

    first = client.post("/api/purchases", json=credits, headers={"Idempotency-Key": "order-1"})
    again = client.post("/api/purchases", json=credits, headers={"Idempotency-Key": "order-1"})
    other_body = client.post("/api/purchases", json=card, headers={"Idempotency-Key": "order-1"})
    card_first = client.post("/api/purchases", json=card, headers={"Idempotency-Key": "order-2"})
    card_again = client.post("/api/purchases", json=card, headers={"Idempotency-Key": "order-2"})

    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (other_body.status_code, other_body.get_json()["error"]) == (422, "idempotency_key_reused")
    assert card_first.status_code == card_again.status_code == 201
    assert card_again.get_json()["id"] == card_first.get_json()["id"]
    assert len(httpserver.log) == 1  # Stripe was called once
    assert shop.count(Purchase) == 2
    assert shop.customer(customer.id).credit_balance_cents == 7500


def test_a_repeat_after_a_lost_card_answer_resumes_the_same_purchase(client, httpserver, monkeypatch):
    """The pending purchase committed, Stripe made the session, then recording it failed (the
    database went away): the client saw a 503 and retries with the same key."""
    from sqlalchemy.exc import OperationalError

    from webapp.services.payments import purchases

    customer = shop.add_customer()
    shop.add_product(sku="lead-1", price=2500)
    httpserver.expect_request(SESSIONS, method="POST").respond_with_json(session_answer())
    real_attach, failures = purchases.attach_checkout, []

    def attach_fails_once(*args, **kwargs):
        if not failures:
            failures.append("database gone")
            raise OperationalError("UPDATE purchases", {}, Exception("server closed the connection"))
        return real_attach(*args, **kwargs)

    monkeypatch.setattr(purchases, "attach_checkout", attach_fails_once)
    card = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}

    lost = client.post("/api/purchases", json=card, headers={"Idempotency-Key": "order-9"})
    retried = client.post("/api/purchases", json=card, headers={"Idempotency-Key": "order-9"})

    assert lost.status_code == 503 and retried.status_code == 201
    assert shop.count(Purchase) == 1
    assert retried.get_json()["checkout_url"] and retried.get_json()["status"] == "pending"
    # Both Stripe calls carried the purchase's idempotency key, so Stripe made one session.
    keys = {request.headers["Idempotency-Key"] for request, _ in httpserver.log}
    assert len(httpserver.log) == 2 and keys == {f"backstop-checkout-purchase-{retried.get_json()['id']}"}


def test_a_repeat_whose_key_record_was_lost_never_pays_twice(client):
    customer = shop.add_customer(balance=10_000)
    shop.add_product(sku="lead-1", price=2500)
    order = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}

    first = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "order-7"})
    db.session.execute(IdempotencyRecord.__table__.delete())  # the answer's record is gone
    db.session.commit()
    again = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "order-7"})
    other_key = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "order-8"})

    assert first.status_code == again.status_code == other_key.status_code == 201
    assert again.get_json()["id"] == first.get_json()["id"] != other_key.get_json()["id"]
    assert shop.customer(customer.id).credit_balance_cents == 10_000 - 2 * 2500
    assert shop.count(Purchase) == 2


def test_idempotency_key_is_released_when_nothing_was_written(client):
    customer = shop.add_customer(balance=0)
    shop.add_product(sku="lead-1", price=2500)
    order = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "credits"}

    short = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "retry-me"})
    db.session.execute(Customer.__table__.update().values(credit_balance_cents=2500))
    db.session.commit()
    retried = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "retry-me"})

    assert short.status_code == 409 and retried.status_code == 201
    assert shop.count(IdempotencyRecord) == 1


def test_idempotency_key_on_create_customer_replays_the_first_answer(client):
    body = {"email": "grace@example.com", "name": "Grace Hopper"}

    first = client.post("/api/customers", json=body, headers={"Idempotency-Key": "signup-1"})
    again = client.post("/api/customers", json=body, headers={"Idempotency-Key": "signup-1"})
    without_key = client.post("/api/customers", json=body)
    other = client.post("/api/customers", json={**body, "name": "G. Hopper"}, headers={"Idempotency-Key": "signup-1"})

    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert (without_key.status_code, without_key.get_json()["error"]) == (409, "customer_exists")
    assert (other.status_code, other.get_json()["error"]) == (422, "idempotency_key_reused")
    assert shop.count(Customer) == 1
    assert len(shop.operations("email.welcome")) == 1


def test_stripe_failure_is_replayed_not_retried_with_the_same_key(client, httpserver):
    customer = shop.add_customer()
    shop.add_product(sku="lead-1")
    httpserver.expect_request(SESSIONS, method="POST").respond_with_json(
        {"error": {"type": "api_error", "message": "boom"}}, status=500
    )
    order = {"customer_id": customer.id, "product_sku": "lead-1", "payment_method": "card"}

    first = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "k"})
    second = client.post("/api/purchases", json=order, headers={"Idempotency-Key": "k"})

    assert first.status_code == second.status_code == 502
    assert second.get_json() == first.get_json()
    assert shop.count(Purchase) == 1 and len(httpserver.log) == 1


# --- reading a purchase ---------------------------------------------------------------------------


def test_get_purchase_shows_status_amounts_and_fulfilment(client):
    purchase = shop.add_purchase(
        shop.add_customer(), shop.add_product(sku="lead-9", price=1234), status="completed", fulfilment_status="failing"
    )

    found = client.get(f"/api/purchases/{purchase.id}")
    missing = client.get("/api/purchases/999999")
    nonsense = client.get("/api/purchases/abc")
    # Digits that str.isdigit() accepts but int() does not (superscripts), and other scripts' digits.
    odd_digits = [client.get(f"/api/purchases/{value}") for value in ("\u00b2", "\u0661\u0662", "1\u00b3")]

    assert found.status_code == 200
    body = found.get_json()
    assert body["id"] == purchase.id and body["product_sku"] == "lead-9"
    assert (body["status"], body["amount_cents"], body["currency"]) == ("completed", 1234, "usd")
    assert body["fulfilment_status"] == "failing" and body["refunded_cents"] == 0
    assert set(body) >= {"created_at", "completed_at", "fulfilled_at", "refunded_at"}
    assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
    assert (nonsense.status_code, nonsense.get_json()["error"]) == (404, "not_found")
    assert [(r.status_code, r.get_json()["error"]) for r in odd_digits] == [(404, "not_found")] * 3
