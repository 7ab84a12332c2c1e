"""The failed-operations list: filters in the URL, search, keyset pages, details, escaping."""

from __future__ import annotations

import re
from datetime import timedelta

from tests.support.console import listed_ids, make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import OperationAttempt
from webapp.models.email import EmailLog
from webapp.models.payments import Customer, Product, Purchase
from webapp.services.console.failures import list_operations
from webapp.services.console.filters import Filters, count_matching

# --- failed operations: list, filters, keyset ---------------------------------------------


def test_filters_in_the_url(client):
    email_dead = make_op(kind="email", name="email.welcome", error="SMTP timeout after 30s")
    webhook_dead = make_op(kind="webhook", name="stripe.checkout.session.completed", error="Database down")
    resolved = make_op(resolved_at=utcnow(), resolved_by="someone", error="old failure")
    old = make_op(dead_ago=timedelta(days=3), error="ancient")
    retrying = make_op(state="retrying", error_message="flaky")
    make_op(state="succeeded")

    def ids(query):
        response = client.get(f"/admin/failed-operations?{query}")
        assert response.status_code == 200, response.text
        return set(listed_ids(response.text))

    assert ids("") == {email_dead.id, webhook_dead.id, old.id}
    assert ids("kind=webhook") == {webhook_dead.id}
    assert ids("name=email.welcome&range=24h") == {email_dead.id}
    assert ids("status=resolved") == {resolved.id}
    assert ids("status=all") == {email_dead.id, webhook_dead.id, old.id, resolved.id}
    assert ids("status=retrying") == {retrying.id}
    assert ids("q=database") == {webhook_dead.id}
    assert ids(f"q={email_dead.idempotency_key}") == {email_dead.id}
    assert ids(f"q={webhook_dead.subject}") == {webhook_dead.id}
    assert ids(f"q=USER{old.idempotency_key.split('-')[1]}@example") == {old.id}
    since = (utcnow() - timedelta(days=4)).isoformat(timespec="minutes")
    until = (utcnow() - timedelta(days=2)).isoformat(timespec="minutes")
    assert ids(f"since={since}&until={until}") == {old.id}
    # The list alone, for htmx filter changes.
    fragment = client.get(
        "/admin/failed-operations?kind=email", headers={"HX-Request": "true", "HX-Target": "ops-list"}
    )
    assert "<html" not in fragment.text
    assert set(listed_ids(fragment.text)) == {email_dead.id, old.id}
    assert "HX-Request" in fragment.headers["Vary"]
    for bad in ("kind=nope", "status=zzz", "range=2y", "since=yesterday", "cursor=garbage"):
        response = client.get(f"/admin/failed-operations?{bad}")
        assert response.status_code == 400, bad
        assert '<p class="error" role="alert">' in response.text


def test_search_finds_operations_by_customer_email(app):
    customer = Customer(email="Grace.Hopper@example.com", name="Grace Hopper")
    product = Product(sku="p1", name="Lead", kind="lead", price_cents=100)
    db.session.add_all([customer, product])
    db.session.flush()
    purchase = Purchase(customer_id=customer.id, product_id=product.id, payment_method="card", amount_cents=100)
    db.session.add(purchase)
    db.session.commit()
    related = make_op(kind="webhook", payload={"purchase_id": purchase.id}, subject="evt_1")
    # As the Stripe intake and the welcome email name them: in the subject only.
    webhook = make_op(kind="webhook", payload={"event_id": "evt_2"}, subject=f"purchase:{purchase.id}")
    welcome = make_op(payload={"to": "renamed@example.net"}, subject=f"customer:{customer.id}")
    make_op(kind="webhook", payload={}, subject=f"purchase:{purchase.id + 1000}")
    make_op(payload={"purchase_id": "not-a-number"})  # junk in a payload never breaks the search
    make_op(payload={"purchase_id": None, "to": "someone@else.org"})
    found = list_operations(Filters(q="grace.hopper")).rows
    assert sorted(op.id for op in found) == sorted([related.id, webhook.id, welcome.id])
    assert [op.payload["to"] for op in list_operations(Filters(q="ELSE.ORG")).rows] == ["someone@else.org"]


def test_keyset_pagination_walks_every_row_once_in_order(client, sqlite_app):
    sqlite_app.config["ADMIN_PAGE_SIZE"] = 3
    same = timedelta(minutes=5)
    rows = [make_op(dead_ago=same) for _ in range(4)] + [make_op(dead_ago=timedelta(minutes=n)) for n in (1, 9, 20)]
    expected = [op.id for op in sorted(rows, key=lambda op: (op.dead_at, op.id), reverse=True)]
    html = client.get("/admin/failed-operations").text
    seen = listed_ids(html)
    while match := re.search(r'hx-get="(/admin/partials/operations\?[^"]+)"', html):
        html = client.get(match.group(1).replace("&amp;", "&")).text
        seen += listed_ids(html)
    assert seen == expected


def test_keyset_pagination_on_each_backend(app):
    now = utcnow()
    for n in range(5):
        make_op(dead_ago=timedelta(minutes=n % 2))
    page1 = list_operations(Filters(), limit=2, now=now)
    page2 = list_operations(Filters(), cursor=page1.next_cursor, limit=2, now=now)
    page3 = list_operations(Filters(), cursor=page2.next_cursor, limit=2, now=now)
    ids = [op.id for page in (page1, page2, page3) for op in page.rows]
    assert len(ids) == len(set(ids)) == 5 and page3.next_cursor is None
    assert count_matching(Filters(q="SMTP")) == 5


def test_details_show_payload_attempts_purchase_customer_and_email_log(client):
    customer = Customer(email="ada@example.com", name="Ada Lovelace")
    product = Product(sku="p2", name="Solar lead", kind="lead", price_cents=4900)
    db.session.add_all([customer, product])
    db.session.flush()
    purchase = Purchase(customer_id=customer.id, product_id=product.id, payment_method="card", amount_cents=4900)
    db.session.add(purchase)
    db.session.commit()
    operation = make_op(payload={"to": "ada@example.com", "purchase_id": purchase.id}, attempts=2)
    start = utcnow() - timedelta(minutes=3)
    db.session.add_all(
        [
            OperationAttempt(
                operation_id=operation.id,
                number=1,
                started_at=start,
                finished_at=start,
                duration_ms=1234,
                outcome="failed",
                error_class="TransientError",
                error_message="first try broke",
            ),
            EmailLog(
                operation_id=operation.id,
                purchase_id=purchase.id,
                attempt=1,
                to_address="ada@example.com",
                template="welcome",
                provider="smtp",
                status="failed",
                error="421 try later",
            ),
        ]
    )
    db.session.commit()
    html = client.get(f"/admin/partials/operations/{operation.id}/details").text
    for expected in (
        "&#34;purchase_id&#34;: " + str(purchase.id),
        "1234 ms",
        "first try broke",
        "Solar lead",
        "Ada Lovelace",
        "421 try later",
        "Stack trace",
        operation.idempotency_key,
    ):
        assert expected in html, expected
    assert client.get("/admin/partials/operations/999999/details").status_code == 404


def test_external_text_is_escaped(client):
    operation = make_op(error="<script>alert('x')</script> from provider")
    html = client.get("/admin/failed-operations").text
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(" in html
    details = client.get(f"/admin/partials/operations/{operation.id}/details").text
    assert "<script>alert(" not in details


# --- details name the customer ---


def test_details_find_the_customer_a_welcome_email_names_in_its_subject(client):
    customer = Customer(email="new@example.com", name="Katherine Johnson")
    db.session.add(customer)
    db.session.commit()
    # The address on the email differs from the customer's current one: the subject still links them.
    operation = make_op(payload={"to": "old@example.com"}, subject=f"customer:{customer.id}")
    html = client.get(f"/admin/partials/operations/{operation.id}/details").text
    assert "Katherine Johnson" in html and "new@example.com" in html
    odd = make_op(payload={}, subject="customer:" + "9" * 30)  # never a database error
    assert client.get(f"/admin/partials/operations/{odd.id}/details").status_code == 200
