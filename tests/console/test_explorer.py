"""The operations explorer: every state, each kind of search, keyset pages, precise 400s, the permalink's timeline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.support import shop
from tests.support.console import make_op, post
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, StripeEvent
from webapp.services.access import tokens

STATES = ("pending", "scheduled", "running", "retrying", "succeeded", "dead", "cancelled")


@dataclass
class World:
    """Two customers' operations, one in every state, and the ids the searches should find."""

    by_state: dict
    ada_email: int
    ada_webhook: int
    ada_welcome: int
    bob_email: int
    timeout: int


def _world() -> World:
    now = utcnow()
    ada, bob = shop.add_customer(), shop.add_customer("bob@example.com", "Bob Builder")
    product = shop.add_product()
    mine = shop.add_purchase(ada, product, status="completed", stripe_checkout_session_id="cs_test_ada")
    theirs = shop.add_purchase(bob, product, status="completed")
    by_state = {
        state: make_op(state=state, name=f"email.state_{state}", subject=f"state:{state}").id for state in STATES
    }
    webhook = make_op(
        state="succeeded",
        kind="webhook",
        name="stripe.checkout.session.completed",
        idempotency_key="stripe-event:evt_test_ada",
        subject=f"purchase:{mine.id}",
        payload={"event_id": "evt_test_ada", "type": "checkout.session.completed"},
        result={"event_id": "evt_test_ada", "outcome": "completed", "purchase_id": mine.id},
        created_at=now - timedelta(minutes=10),
    )
    db.session.add(
        StripeEvent(
            id="evt_test_ada",
            type="checkout.session.completed",
            livemode=False,
            object_id="cs_test_ada",
            payload="{}",
            received_at=now - timedelta(minutes=10),
            processing_state="processed",
            operation_id=webhook.id,
        )
    )
    db.session.commit()
    email = make_op(
        state="succeeded",
        name="email.lead_purchase_confirmation",
        idempotency_key=f"purchase:{mine.id}:confirmation",
        subject=f"purchase:{mine.id}",
        payload={"to": ada.email, "purchase_id": mine.id, "template": "lead_purchase_confirmation"},
        result={"provider": "smtp", "message_id": "<msg-ada@backstop>"},
        created_at=now - timedelta(minutes=9),
        succeeded_at=now - timedelta(minutes=8),
    )
    welcome = make_op(state="succeeded", subject=f"customer:{ada.id}", created_at=now - timedelta(minutes=20))
    bob_email = make_op(state="succeeded", subject=f"purchase:{theirs.id}", created_at=now - timedelta(minutes=8))
    timeout = make_op(state="dead", error="Provider said: quota_exceeded for today")
    return World(by_state, email.id, webhook.id, welcome.id, bob_email.id, timeout.id)


@pytest.fixture
def world(sqlite_app) -> World:
    return _world()


def _ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr class="explorer-row" data-operation="(\d+)"', html)]


def _auth() -> dict:
    return {"Authorization": f"Bearer {tokens.create_token('explorer', 'admin').raw}"}


def test_every_state_is_listed_on_the_page_and_in_the_json(client, world):
    auth = _auth()
    everything = _ids(client.get("/admin/operations").text)
    assert set(world.by_state.values()) <= set(everything)
    for state, operation_id in world.by_state.items():
        listed = _ids(client.get(f"/admin/operations?state={state}&name=email.state_{state}").text)
        assert listed == [operation_id], state
        answer = client.get(f"/api/admin/operations?state={state}", headers=auth)
        assert answer.status_code == 200, answer.json
        assert operation_id in [op["id"] for op in answer.json["operations"]]
        assert {op["state"] for op in answer.json["operations"]} == {state}


SEARCHES = [
    # (query arguments, which World fields must be found, which must not)
    ({"q": "ada@example.com"}, {"ada_email", "ada_webhook", "ada_welcome"}, {"bob_email"}),
    ({"q": "ADA@example.com", "search": "customer"}, {"ada_email", "ada_webhook", "ada_welcome"}, {"bob_email"}),
    ({"q": "lovelace"}, {"ada_email", "ada_webhook", "ada_welcome"}, {"bob_email"}),
    ({"q": "evt_test_ada"}, {"ada_webhook"}, {"ada_email"}),
    ({"q": "PURCHASE"}, {"ada_email", "ada_webhook"}, {"bob_email", "ada_welcome"}),
    ({"q": "PURCHASE:confirmation", "search": "key"}, {"ada_email"}, {"ada_webhook"}),
    ({"q": "SUBJECT", "search": "subject"}, {"ada_email", "ada_webhook"}, {"bob_email"}),
    ({"q": "quota_exceeded", "search": "error"}, {"timeout"}, {"ada_email"}),
]


def test_each_kind_of_search_finds_the_right_operations_in_the_json(app):
    """On SQLite and PostgreSQL: search by email, name, event, purchase, key, subject and error text."""
    world = _world()
    client, auth = app.test_client(), _auth()
    purchase_id = shop.operation(world.ada_email).payload["purchase_id"]
    replacements = {
        "PURCHASE": str(purchase_id),
        "SUBJECT": f"purchase:{purchase_id}",
        "PURCHASE:confirmation": f"purchase:{purchase_id}:confirmation",
    }
    for args, found, absent in SEARCHES:
        query = {key: replacements.get(value, value) for key, value in args.items()}
        answer = client.get("/api/admin/operations", query_string={"state": "", **query}, headers=auth)
        assert answer.status_code == 200, answer.json
        listed = {op["id"] for op in answer.json["operations"]}
        assert {getattr(world, name) for name in found} <= listed, args
        assert not {getattr(world, name) for name in absent} & listed, args


def test_the_page_searches_a_customer_email_and_says_how(client, world):
    html = client.get("/admin/operations?q=ada@example.com&state=succeeded").text
    assert set(_ids(html)) == {world.ada_email, world.ada_webhook, world.ada_welcome}
    assert 'data-searched-as="customer"' in html
    fragment = client.get(
        "/admin/operations?q=evt_test_ada", headers={"HX-Request": "true", "HX-Target": "explorer-list"}
    )
    assert "<html" not in fragment.text and _ids(fragment.text) == [world.ada_webhook]


def test_keyset_pages_neither_repeat_nor_skip_even_with_equal_times_and_new_rows(client, sqlite_app):
    auth = _auth()
    same = utcnow() - timedelta(hours=1)
    ids = [make_op(state="succeeded", name="email.page", created_at=same).id for _ in range(7)]
    seen, cursor = [], None
    while True:
        args = {"state": "succeeded", "name": "email.page", "limit": 3, **({"cursor": cursor} if cursor else {})}
        answer = client.get("/api/admin/operations", query_string=args, headers=auth).json
        seen += [op["id"] for op in answer["operations"]]
        # Newer rows arriving meanwhile do not shift the pages.
        make_op(state="succeeded", name="email.page", created_at=utcnow())
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)

    # The page's "Load more" asks the same URL for the next rows only (htmx target explorer-more).
    sqlite_app.config["ADMIN_PAGE_SIZE"] = 3
    first = client.get("/admin/operations?state=succeeded&name=email.page")
    more = re.search(r'hx-get="(/admin/operations\?[^"]*cursor=[^"]*)"', first.text).group(1).replace("&amp;", "&")
    rows = client.get(more, headers={"HX-Request": "true", "HX-Target": "explorer-more"})
    assert "<html" not in rows.text and "<table" not in rows.text
    listed = client.get("/api/admin/operations?state=succeeded&name=email.page&limit=6", headers=auth).json
    assert _ids(first.text) + _ids(rows.text) == [op["id"] for op in listed["operations"]]


@pytest.mark.parametrize(
    "query, code, message",
    [
        ("state=finished", "invalid_filter", "state must be one of scheduled, pending, running"),
        ("state=dead&status=all", "invalid_filter", "filter by state"),
        ("search=everything&q=x", "invalid_filter", "search must be one of auto, subject, customer"),
        ("search=event&q=ch_123", "invalid_filter", "a Stripe event id starts with evt_"),
        ("search=purchase&q=abc", "invalid_filter", "a purchase id is a number"),
        ("state=&cursor=nonsense", "invalid_cursor", "the page cursor is malformed"),
        ("state=&range=forever", "invalid_filter", "range must be one of"),
    ],
)
def test_bad_filters_are_a_precise_400(client, query, code, message):
    answer = client.get(f"/api/admin/operations?{query}", headers=_auth())
    assert answer.status_code == 400 and answer.json["error"] == code and message in answer.json["message"]
    # The page says the same in its error message (it has no status filter, so that one is ignored there).
    if "status" not in query:
        page = client.get(f"/admin/operations?{query}")
        assert page.status_code == 400 and message in page.text


def test_the_permalink_shows_the_timeline_the_result_and_the_event_behind_it(client, world):
    started = utcnow() - timedelta(minutes=9)
    db.session.add_all(
        [
            OperationAttempt(
                operation_id=world.ada_email,
                number=1,
                started_at=started,
                finished_at=started + timedelta(seconds=1),
                duration_ms=1000,
                outcome="failed",
                error_class="TransientError",
                error_message="smtp: 451 try again later",
            ),
            OperationAttempt(
                operation_id=world.ada_email,
                number=2,
                started_at=started + timedelta(seconds=30),
                finished_at=started + timedelta(seconds=31),
                duration_ms=212,
                outcome="succeeded",
            ),
        ]
    )
    db.session.commit()

    html = client.get(f"/admin/operations/{world.ada_email}").text

    timeline = html[html.index('id="timeline"') : html.index("</ol>")]
    kinds = re.findall(r'data-kind="(\w+)"', timeline)
    assert kinds[0] == "created" and kinds.count("attempt") == 2 and "succeeded" in kinds
    assert "451 try again later" in timeline and "212 ms" in timeline and "1000 ms" in timeline
    assert "&lt;msg-ada@backstop&gt;" in html  # the provider's message id, escaped
    assert "evt_test_ada" in html[html.index('id="stripe-events"') :]
    assert client.get("/admin/operations/999999").status_code == 404

    detail = client.get(f"/api/admin/operations/{world.ada_email}", headers=_auth()).json
    assert detail["result"] == {"provider": "smtp", "message_id": "<msg-ada@backstop>"}
    assert [(a["number"], a["outcome"], a["duration_ms"]) for a in detail["attempts_log"]] == [
        (1, "failed", 1000),
        (2, "succeeded", 212),
    ]
    assert [event["id"] for event in detail["stripe_events"]] == ["evt_test_ada"]
    assert detail["stripe_events"][0]["operation_id"] == world.ada_webhook
    assert detail["stripe_events"][0]["received_at"].endswith("Z")
    assert world.ada_webhook in [op["id"] for op in detail["related_operations"]]


def test_the_permalink_shows_admin_actions_kept_on_the_row(client, world):
    dead = world.by_state["dead"]
    assert post(client, f"/admin/operations/{dead}/resolve", {"note": "customer refunded"}).status_code == 200

    timeline = client.get(f"/admin/operations/{dead}").text
    assert 'data-kind="admin"' in timeline and "Resolved" in timeline and "customer refunded" in timeline
    assert "admin@example.com" in timeline


def test_the_permalink_keeps_a_retry_that_a_later_resolve_would_have_overwritten(client, world, sqlite_app):
    dead = world.by_state["dead"]
    assert post(client, f"/admin/operations/{dead}/retry", {}).status_code == 200
    with sqlite_app.app_context():  # the retried attempt dies again
        db.session.execute(update(Operation).where(Operation.id == dead).values(state="dead", dead_at=utcnow()))
        db.session.commit()
    assert post(client, f"/admin/operations/{dead}/resolve", {"note": "gave up"}).status_code == 200

    page = client.get(f"/admin/operations/{dead}").text
    timeline = page[page.index('id="timeline"') :]
    assert timeline.index("Retried") < timeline.index("Resolved") and "gave up" in timeline
