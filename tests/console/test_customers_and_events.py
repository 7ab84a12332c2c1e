"""The Stripe event log (list, details, replay) and the customer and purchase pages (issue 11, items 3 and 4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.console.test_query_plans import explain
from tests.payments.test_stripe_intake import stripe_log  # noqa: F401  (a fixture, used by name)
from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.console import post
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer, EmailLog, Operation, StripeEvent
from webapp.services.access import tokens
from webapp.services.console import customers, stripe_events
from webapp.services.console.stripe_events import EventFilters
from webapp.services.engine import runner
from webapp.services.payments import intake, replay

HOSTILE = "<script>alert(1)</script>"


def _store(event: dict, *, at=None) -> str:
    """Store an event as the intake does (verified already); return its id."""
    intake.record_event(signing.body_of(event), event, now=at or utcnow())
    return event["id"]


def _run(operation_id: int):
    now = utcnow()
    return runner.execute(operation_id, now=now, clock=lambda: now)


def _auth(name="ops") -> dict:
    return {"Authorization": f"Bearer {tokens.create_token(name, 'admin').raw}"}


@pytest.fixture
def paid(sqlite_app):
    """A customer who bought a 10000-cent credit pack by card: its checkout event processed, the email queued."""
    ada = shop.add_customer("Ada.Lovelace@Example.com", "Ada Lovelace")
    pack = shop.add_product("credits-100", kind="credits", price=9000, credits=10000, name="$100 credit pack")
    purchase = shop.add_purchase(ada, pack)
    event_id = _store(shop.event_for("checkout.session.completed", purchase, session_id="cs_test_ada"))
    assert _run(shop.event(event_id).operation_id).outcome == "succeeded"
    return ada, purchase, event_id


# --- the event log ------------------------------------------------------------------------


def test_event_log_filters_searches_and_pages(client, paid):
    _, purchase, checkout_id = paid
    ignored = shop.event_for("customer.created", None)
    ignored_id = _store(ignored, at=utcnow() + timedelta(seconds=1))
    refund_id = _store(shop.event_for("charge.refunded", purchase), at=utcnow() + timedelta(seconds=2))

    page = client.get("/admin/stripe-events").text
    assert page.index(refund_id) < page.index(ignored_id) < page.index(checkout_id)  # newest first
    assert f'href="/admin/operations/{shop.event(checkout_id).operation_id}"' in page

    for query, shown, hidden in (
        (f"q={checkout_id}", checkout_id, ignored_id),
        ("q=cs_test_ada", checkout_id, refund_id),  # the object id
        ("type=customer.created", ignored_id, checkout_id),
        ("state=processed", checkout_id, refund_id),
    ):
        text = client.get(f"/admin/stripe-events?{query}").text
        assert shown in text and hidden not in text, query

    # Keyset pages, served from the same URL as htmx rows.
    client.application.config["ADMIN_PAGE_SIZE"] = 2
    first = client.get("/admin/stripe-events").text
    cursor = first.split("cursor=", 1)[1].split("&", 1)[0].split('"', 1)[0]
    rows = client.get(
        f"/admin/stripe-events?cursor={cursor}", headers={"HX-Request": "true", "HX-Target": "load-more-events"}
    ).text
    assert checkout_id in rows and refund_id not in rows and "<html" not in rows

    assert client.get("/admin/stripe-events?state=bogus").status_code == 400
    assert client.get("/admin/stripe-events?cursor=nonsense").status_code == 400


def test_event_details_escape_the_body_and_show_no_secret(client, sqlite_app):
    event = shop.event_for("payment_intent.payment_failed", None)
    event["data"]["object"].update(
        client_secret="pi_123_secret_topsecretvalue", description=HOSTILE, metadata={"note": "sk_live_abcdef123"}
    )
    event_id = _store(event)

    page = client.get(f"/admin/stripe-events/{event_id}")
    assert page.status_code == 200
    assert HOSTILE not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "topsecretvalue" not in page.text and "sk_live_abcdef123" not in page.text
    assert "[redacted]" in page.text
    assert "whsec_" not in page.text and "Stripe-Signature" not in page.text
    assert client.get("/admin/stripe-events/evt_unknown").status_code == 404


def test_replaying_a_completed_checkout_sends_no_second_email_and_grants_no_second_credit(client, paid, stripe_log):  # noqa: F811
    ada, purchase, event_id = paid
    balance = shop.customer(ada.id).credit_balance_cents
    assert balance == 10000
    emails_before = shop.email_operations(purchase.id)
    assert len(emails_before) == 1

    response = post(client, f"/admin/stripe-events/{event_id}/replay")
    assert response.status_code == 200 and "Replay 1 queued" in response.text
    replay = db.session.execute(
        select(Operation).where(Operation.idempotency_key == f"stripe-replay:{event_id}:1")
    ).scalar_one()
    assert replay.name == "stripe.checkout.session.completed" and replay.payload["replay"] == 1
    assert replay.payload["replayed_by"] == "admin@example.com" and replay.subject == f"purchase:{purchase.id}"
    replay_id = replay.id
    db.session.rollback()

    assert _run(replay_id).outcome == "succeeded"
    logged = [record.getMessage() for record in stripe_log]
    assert f"stripe event {event_id} replay 1: already_completed, nothing applied again (no email, no credit)" in logged
    assert shop.customer(ada.id).credit_balance_cents == balance  # no second credit
    assert [op.id for op in shop.email_operations(purchase.id)] == [op.id for op in emails_before]  # no second email
    assert shop.event(event_id).processing_state == "processed"

    # The event lists both operations; a second replay is number 2, with its own key.
    detail = client.get(f"/admin/stripe-events/{event_id}").text
    assert f'href="/admin/operations/{replay_id}"' in detail and "replay 1 by admin@example.com" in detail
    again = client.post(f"/api/admin/stripe-events/{event_id}/replay", headers=_auth())
    assert again.status_code == 202 and again.json["replay"] == 2
    assert shop.operation(again.json["operation_id"]).idempotency_key == f"stripe-replay:{event_id}:2"


def test_replay_refusals(client, paid):
    _, purchase, event_id = paid
    auth = _auth()
    ignored_id = _store(shop.event_for("customer.created", None))

    # Without a CSRF token the console refuses; an unknown event is 404; an unhandled type 409.
    assert client.post(f"/admin/stripe-events/{event_id}/replay").status_code == 400
    assert post(client, "/admin/stripe-events/evt_nope/replay").status_code == 404
    assert post(client, f"/admin/stripe-events/{ignored_id}/replay").status_code == 409
    assert client.post("/api/admin/stripe-events/evt_nope/replay", headers=auth).status_code == 404
    refused = client.post(f"/api/admin/stripe-events/{ignored_id}/replay", headers=auth)
    assert refused.status_code == 409 and refused.json["error"] == "not_replayable"

    # While a replay is still waiting to run, another one is refused (it would race it).
    assert client.post(f"/api/admin/stripe-events/{event_id}/replay", headers=auth).status_code == 202
    busy = client.post(f"/api/admin/stripe-events/{event_id}/replay", headers=auth)
    assert busy.status_code == 409 and "under way" in busy.json["message"]

    # A body trimmed by retention cannot be replayed.
    db.session.execute(StripeEvent.__table__.update().values(payload="").where(StripeEvent.id == ignored_id))
    refund_id = _store(shop.event_for("charge.refunded", purchase))
    _run(shop.event(refund_id).operation_id)
    db.session.execute(StripeEvent.__table__.update().values(payload="").where(StripeEvent.id == refund_id))
    db.session.commit()
    trimmed = client.post(f"/api/admin/stripe-events/{refund_id}/replay", headers=auth)
    assert trimmed.status_code == 409 and "retention" in trimmed.json["message"]


def test_event_json_endpoints(client, paid):
    _, _, event_id = paid
    auth = _auth()
    assert client.get("/api/admin/stripe-events").status_code == 401
    assert client.get(f"/api/admin/stripe-events/{event_id}").status_code == 401
    assert client.post(f"/api/admin/stripe-events/{event_id}/replay").status_code == 401

    listed = client.get(f"/api/admin/stripe-events?q={event_id}", headers=auth).json
    (item,) = listed["stripe_events"]
    assert item["id"] == event_id and item["processing_state"] == "processed" and item["received_at"].endswith("Z")
    assert item["operations"][0]["replay"] is None and item["operations"][0]["state"] == "succeeded"
    one = client.get(f"/api/admin/stripe-events/{event_id}", headers=auth).json
    assert one["body"]["id"] == event_id and one["body"]["data"]["object"]["id"] == "cs_test_ada"
    assert client.get("/api/admin/stripe-events/evt_nope", headers=auth).status_code == 404
    for hostile in ("evt_%00", "e" * 256, "%ED%A0%80"):
        assert client.get(f"/api/admin/stripe-events/{hostile}", headers=auth).status_code == 404, hostile
        assert client.post(f"/api/admin/stripe-events/{hostile}/replay", headers=auth).status_code == 404, hostile
        assert client.get(f"/admin/stripe-events/{hostile}").status_code == 404, hostile

    for query, code in (
        ("state=bogus", "invalid_filter"),
        ("q=" + "x" * 300, "invalid_filter"),
        ("q=%00", "invalid_filter"),
        ("cursor=nonsense", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
    ):
        response = client.get(f"/api/admin/stripe-events?{query}", headers=auth)
        assert response.status_code == 400 and response.json["error"] == code, query


# --- customers and purchases --------------------------------------------------------------


def test_customer_search_by_email_and_name_ignores_case(client, sqlite_app):
    ada = shop.add_customer("Ada.Lovelace@Example.com", "Ada Lovelace")
    grace = shop.add_customer("grace@navy.mil", "Grace Hopper")
    alan = shop.add_customer("alan@example.com", "Alan Turing")
    auth = _auth()

    assert [c.id for c in customers.search_customers("ada.LOVE").rows] == [ada.id]
    assert [c.id for c in customers.search_customers("GRACE h").rows] == [grace.id]  # name prefix
    assert [c.id for c in customers.search_customers("a").rows] == [ada.id, alan.id]
    assert customers.search_customers("hopper").rows == []  # prefix search: not a middle word

    page = client.get("/admin/customers?q=gRaCe").text
    assert "grace@navy.mil" in page and "alan@example.com" not in page
    found = client.get("/api/admin/customers?q=ADA", headers=auth).json
    assert [c["email"] for c in found["customers"]] == ["Ada.Lovelace@Example.com"]
    assert client.get("/api/admin/customers").status_code == 401
    assert client.get("/api/admin/customers?q=" + "x" * 201, headers=auth).json["error"] == "invalid_filter"
    assert client.get("/api/admin/customers?cursor=x", headers=auth).json["error"] == "invalid_cursor"


def _sorts_everything(plan: list[str]) -> bool:
    """A plan that sorts every match (an incremental sort of index-ordered rows, for the id tie-break, is fine)."""
    return any(
        "TEMP B-TREE FOR ORDER BY" in line or line.strip().startswith(("Sort  (", "->  Sort  (")) for line in plan
    )


def test_customer_search_and_the_event_log_stay_on_indexes(app):
    """On both databases: results agree, and each query is an index range in order (fast at any size)."""
    ada = shop.add_customer("Ada.Lovelace@Example.com", "Ada Lovelace")
    shop.add_customer("adam@example.com", "Zed Adams")
    shop.add_customer("bob@example.com", "Ada_Underscore")  # "_" must not act as a wildcard
    assert [c.id for c in customers.search_customers("ADA.").rows] == [ada.id]
    assert [c.email for c in customers.search_customers("ADA L").rows] == ["Ada.Lovelace@Example.com"]
    assert [c.email for c in customers.search_customers("ada_").rows] == ["bob@example.com"]

    for column, index in ((Customer.email, "ix_customers_email_lower"), (Customer.name, "ix_customers_name_lower")):
        plan = explain(customers.prefix_query("ada", 51, column))
        assert index in "\n".join(plan) and not _sorts_everything(plan), plan
    cursor = stripe_events.encode_cursor(utcnow(), "evt_x")
    for filters, index in (
        (EventFilters(), "ix_stripe_events_received_at"),
        (EventFilters(type="charge.refunded"), "ix_stripe_events_type_received_at"),
        (EventFilters(state="processed"), "ix_stripe_events_processing_state_received_at"),
    ):
        plan = explain(stripe_events.events_query(filters, cursor, 51))
        assert index in "\n".join(plan) and not _sorts_everything(plan), plan
    assert "SCAN stripe_events" not in "\n".join(explain(stripe_events.events_query(EventFilters(q="x"), None, 51)))

    # An event's operations (its delivery's and a replay's) come from one UNION on both databases.
    purchase = shop.add_purchase(ada, shop.add_product())
    event_id = _store(shop.event_for("checkout.session.completed", purchase))
    db.session.execute(Operation.__table__.update().values(state="succeeded"))
    db.session.commit()
    done = replay.replay_event(event_id, by="admin@example.com")
    (row,) = stripe_events.list_events(EventFilters(q=event_id)).rows
    assert [(link.replay, link.id) for link in row.operations] == [(None, row.operation_id), (1, done.operation_id)]


def test_customer_page_tells_the_whole_story(client, paid):
    ada, purchase, event_id = paid
    email_op = shop.email_operations(purchase.id)[0]
    db.session.add(
        EmailLog(
            operation_id=email_op.id,
            purchase_id=purchase.id,
            attempt=1,
            to_address=ada.email,
            template="credit_purchase_confirmation",
            provider="smtp",
            provider_message_id="<msg-ada-1@backstop>",
            status="sent",
        )
    )
    db.session.commit()

    page = client.get(f"/admin/customers/{ada.id}").text
    assert "100.00 in credits" in page and "(10000 credit cents)" in page  # the balance
    assert "+10000" in page and "credit pack bought" in page and "confirmation email" in page  # its history
    assert "data-unexplained" not in page
    timeline = page.split("<h2>Timeline</h2>", 1)[1]
    assert "&lt;msg-ada-1@backstop&gt;" in timeline  # the provider's message id
    assert f"/admin/stripe-events/{event_id}" in timeline
    assert f'href="/admin/operations/{email_op.id}"' in timeline
    assert f'href="/admin/purchases/{purchase.id}"' in page
    assert 'data-kind="webhook"' in page and 'data-kind="email"' in page  # 7-day delivery stats

    data = client.get(f"/api/admin/customers/{ada.id}", headers=_auth()).json
    assert data["credit_balance_cents"] == 10000 and data["unexplained_credit_cents"] == 0
    assert data["credit_history"][0]["cents"] == 10000
    assert data["delivery_stats"]["by_kind"]["webhook"]["succeeded"] == 1
    assert {entry["kind"] for entry in data["timeline"]} >= {"purchase", "operation", "email", "stripe_event", "credit"}
    assert client.get("/admin/customers/999999").status_code == 404
    assert client.get("/api/admin/customers/999999", headers=_auth("other")).status_code == 404


def test_purchase_page_and_json(client, paid):
    ada, purchase, event_id = paid
    db.session.execute(
        shop.Purchase.__table__.update()
        .where(shop.Purchase.id == purchase.id)
        .values(failure_reason=f"card declined {HOSTILE}")
    )
    db.session.commit()
    page = client.get(f"/admin/purchases/{purchase.id}").text
    assert f'href="/admin/customers/{ada.id}"' in page and event_id in page
    assert "card declined &lt;script&gt;" in page and HOSTILE not in page
    assert f'href="/admin/operations/{shop.event(event_id).operation_id}"' in page

    data = client.get(f"/api/admin/purchases/{purchase.id}", headers=_auth()).json
    assert data["status"] == "completed" and data["customer"]["id"] == ada.id
    assert data["failure_reason"].startswith("card declined")
    assert [e["id"] for e in data["stripe_events"]] == [event_id]
    assert {op["name"] for op in data["operations"]} == {
        "stripe.checkout.session.completed",
        "email.credit_purchase_confirmation",
    }
    assert client.get("/admin/purchases/999999").status_code == 404


def test_failed_operation_subjects_link_to_customers_and_purchases(client, paid):
    _, purchase, _ = paid
    email_op = shop.email_operations(purchase.id)[0]
    db.session.execute(
        Operation.__table__.update()
        .where(Operation.id == email_op.id)
        .values(state="dead", dead_at=utcnow(), error_message="mailbox full")
    )
    db.session.commit()
    page = client.get("/admin/failed-operations").text
    assert f'href="/admin/purchases/{purchase.id}"' in page
    details = client.get(f"/admin/partials/operations/{email_op.id}/details").text
    assert f'href="/admin/purchases/{purchase.id}"' in details and "/admin/customers/" in details
