"""The admin console through Flask's test client: access, CSRF, filters, pages, actions, API."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import and_, func, or_, select

from tests.conftest import _sqlite_backend, make_app
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminUser, BulkJob, FailedLogin, Operation, OperationAttempt
from webapp.models.commerce import Customer, Product, Purchase
from webapp.models.email import EmailLog
from webapp.services.access import tokens
from webapp.services.console import admins, bulk, queries
from webapp.services.console.queries import Filters, fingerprint_of, normalise_error
from webapp.services.engine import runner

PASSWORD = "correct horse battery"
PAGES = [
    "/admin/failed-operations",
    "/admin/operations-health",
    "/admin/issues",
    "/admin/failed-operations/export.csv",
    "/admin/failed-operations/export.json",
]
PARTIALS = [
    "/admin/partials/stats",
    "/admin/partials/operations",
    "/admin/partials/health/cards",
    "/admin/partials/health/status",
    "/admin/partials/health/breakdown",
    "/admin/partials/health/trend",
    "/admin/partials/operations/1/row",
    "/admin/partials/operations/1/details",
    "/admin/partials/bulk-jobs/1",
]
ACTIONS = [
    "/admin/operations/1/retry",
    "/admin/operations/1/resolve",
    "/admin/operations/1/cancel",
    "/admin/operations/bulk",
    "/admin/bulk-jobs",
    "/admin/bulk-jobs/1/start",
    "/admin/bulk-jobs/1/cancel",
    "/admin/issues/abc/retry",
    "/admin/issues/abc/resolve",
    "/admin/logout",
]

_sequence = iter(range(1, 10**9))


def make_op(
    state="dead",
    kind="email",
    name="email.welcome",
    *,
    error="SMTP timeout after 30s",
    dead_ago=timedelta(hours=1),
    **fields,
) -> Operation:
    """Insert one operation row directly (no handler, no doorbell) and commit."""
    now = utcnow()
    n = next(_sequence)
    values = dict(
        kind=kind,
        name=name,
        payload={"to": f"user{n}@example.com"},
        idempotency_key=f"k-{n}",
        subject=f"subject-{n}",
        state=state,
        attempts=1,
        max_attempts=4,
        next_attempt_at=now,
        created_at=now - dead_ago - timedelta(seconds=5),
        updated_at=now,
    )
    if state == "dead":
        values.update(
            dead_at=now - dead_ago,
            error_class="TransientError",
            error_message=error,
            error_kind="transient",
            error_stack="Traceback...\nTransientError: " + (error or ""),
        )
    if state == "succeeded":
        values.update(succeeded_at=now - dead_ago)
    values.update(fields)
    operation = Operation(**values)
    db.session.add(operation)
    db.session.commit()
    return operation


class IsolatedClient(FlaskClient):
    """A test client whose requests do not share ``g`` (the fixtures keep one app context open).

    In production each request gets its own app context; here the test's context is reused,
    and Flask-Login and Flask-WTF cache the user and the CSRF token on ``g``.
    """

    def open(self, *args, **kwargs):
        """Forget the previous request's ``g`` first."""
        for name in list(vars(g)):
            delattr(g, name)
        return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def _isolated_clients(request):
    for name in ("sqlite_app", "app"):
        if name in request.fixturenames:
            request.getfixturevalue(name).test_client_class = IsolatedClient


def csrf_from(html: str) -> str:
    """The CSRF token from a page's meta tag."""
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def login(client, email="admin@example.com", password=PASSWORD, **kwargs):
    """Log in through the form (with its CSRF token); returns the response."""
    token = csrf_from(client.get("/admin/login", **kwargs).text)
    return client.post("/admin/login", data={"email": email, "password": password, "csrf_token": token}, **kwargs)


@pytest.fixture
def admin(sqlite_app):
    """An admin user on the SQLite app."""
    return admins.create_admin("admin@example.com", PASSWORD)


@pytest.fixture
def client(sqlite_app, admin):
    """A test client logged in as the admin, with its CSRF token at ``client.csrf``."""
    client = sqlite_app.test_client()
    assert login(client).status_code == 302
    client.csrf = csrf_from(client.get("/admin/failed-operations").text)
    return client


def post(client, url, data=None, **kwargs):
    """An htmx-style POST carrying the CSRF header."""
    return client.post(url, data=data or {}, headers={"X-CSRFToken": client.csrf, "HX-Request": "true"}, **kwargs)


# --- access -------------------------------------------------------------------------------


def test_index_redirects_to_dashboard(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/operations-health")


def test_anonymous_pages_redirect_to_login_partials_and_actions_get_401(sqlite_app, admin):
    client = sqlite_app.test_client()
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/admin/login?next=" in response.headers["Location"], url
    for url in PARTIALS:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.json["error"] == "unauthorized"
    token = csrf_from(client.get("/admin/login").text)
    for url in ACTIONS:
        response = client.post(url, headers={"X-CSRFToken": token, "HX-Request": "true"})
        assert response.status_code == 401, url
        assert response.headers["HX-Redirect"] == "/admin/login"


def test_login_logout_session_cookie_flags(sqlite_app, admin):
    client = sqlite_app.test_client()
    response = login(client)
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/admin/failed-operations").status_code == 200
    assert db.session.get(AdminUser, admin.id, populate_existing=True).last_login_at is not None
    db.session.rollback()
    token = csrf_from(client.get("/admin/failed-operations").text)
    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 302, response.text
    assert client.get("/admin/failed-operations").status_code == 302

    secure = sqlite_app.test_client()
    response = login(secure, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_login_rejects_open_redirect_and_wrong_password(sqlite_app, admin):
    client = sqlite_app.test_client()
    token = csrf_from(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"email": "admin@example.com", "password": "nope", "csrf_token": token})
    assert response.status_code == 401 and "Wrong email or password" in response.text
    response = client.post(
        "/admin/login",
        data={"email": "admin@example.com", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"},
    )
    assert response.headers["Location"] == "/admin/operations-health"


def test_login_throttled_after_five_failures_per_email_and_ip(sqlite_app, admin):
    client = sqlite_app.test_client()
    for _ in range(5):
        assert login(client, password="wrong password").status_code in (401, 429)
    locked = login(client)
    assert locked.status_code == 429 and "Too many failed attempts" in locked.text
    # Another address is not locked out by this one's failures.
    other = sqlite_app.test_client()
    assert login(other, environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 302
    # After 15 minutes the lock lifts, and a success clears the count.
    later = utcnow() + timedelta(minutes=16)
    assert admins.log_in("admin@example.com", PASSWORD, "127.0.0.1", now=later).user is not None
    assert db.session.execute(select(FailedLogin)).scalars().all() == []


def test_create_admin_cli_and_duplicates(sqlite_app):
    cli = sqlite_app.test_cli_runner()
    result = cli.invoke(args=["create-admin", "Ops@Example.com", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    assert "created admin ops@example.com" in result.output
    user = db.session.execute(select(AdminUser)).scalar_one()
    assert user.password_hash != PASSWORD and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
    db.session.rollback()
    again = cli.invoke(args=["create-admin", "ops@example.com", "--password", PASSWORD])
    assert again.exit_code != 0 and "already exists" in again.output
    short = cli.invoke(args=["create-admin", "x@example.com", "--password", "short"])
    assert short.exit_code != 0 and "at least" in short.output
    prompted = cli.invoke(args=["create-admin", "y@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output


# --- CSRF ---------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused_even_when_testing(client, sqlite_app):
    assert sqlite_app.config["TESTING"] is True
    operation = make_op()
    response = client.post(f"/admin/operations/{operation.id}/retry", headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert "CSRF token" in response.text
    assert db.session.get(Operation, operation.id, populate_existing=True).state == "dead"
    db.session.rollback()
    bad = client.post(f"/admin/operations/{operation.id}/retry", headers={"X-CSRFToken": "forged"})
    assert bad.status_code == 400
    assert post(client, f"/admin/operations/{operation.id}/retry").status_code == 200


def test_api_and_webhooks_do_not_need_csrf(client, sqlite_app):
    raw = tokens.create_token("ci", "admin").raw
    operation = make_op()
    fresh = sqlite_app.test_client()
    response = fresh.post(f"/api/admin/operations/{operation.id}/retry", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.json["state"] == "pending"
    # Refused for its missing signature, not for CSRF.
    webhook = fresh.post("/webhooks/stripe", data="{}")
    assert webhook.status_code != 400 or "CSRF" not in webhook.text


# --- failed operations: list, filters, keyset ---------------------------------------------


def _ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tbody id="op-(\d+)"', html)]


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
        return set(_ids(response.text))

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
    assert set(_ids(fragment.text)) == {email_dead.id, old.id}
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
    found = queries.list_operations(Filters(q="grace.hopper")).rows
    assert sorted(op.id for op in found) == sorted([related.id, webhook.id, welcome.id])
    assert [op.payload["to"] for op in queries.list_operations(Filters(q="ELSE.ORG")).rows] == [
        "someone@else.org"
    ]


def test_keyset_pagination_walks_every_row_once_in_order(client, sqlite_app):
    sqlite_app.config["ADMIN_PAGE_SIZE"] = 3
    same = timedelta(minutes=5)
    rows = [make_op(dead_ago=same) for _ in range(4)] + [make_op(dead_ago=timedelta(minutes=n)) for n in (1, 9, 20)]
    expected = [op.id for op in sorted(rows, key=lambda op: (op.dead_at, op.id), reverse=True)]
    html = client.get("/admin/failed-operations").text
    seen = _ids(html)
    while match := re.search(r'hx-get="(/admin/partials/operations\?[^"]+)"', html):
        html = client.get(match.group(1).replace("&amp;", "&")).text
        seen += _ids(html)
    assert seen == expected


def test_keyset_pagination_on_each_backend(app):
    now = utcnow()
    for n in range(5):
        make_op(dead_ago=timedelta(minutes=n % 2))
    page1 = queries.list_operations(Filters(), limit=2, now=now)
    page2 = queries.list_operations(Filters(), cursor=page1.next_cursor, limit=2, now=now)
    page3 = queries.list_operations(Filters(), cursor=page2.next_cursor, limit=2, now=now)
    ids = [op.id for page in (page1, page2, page3) for op in page.rows]
    assert len(ids) == len(set(ids)) == 5 and page3.next_cursor is None
    assert queries.count_matching(Filters(q="SMTP")) == 5


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


# --- row actions --------------------------------------------------------------------------


def test_retry_swaps_the_row_and_polls_until_terminal(client):
    operation = make_op()
    response = post(client, f"/admin/operations/{operation.id}/retry")
    assert response.status_code == 200
    assert f'<tbody id="op-{operation.id}"' in response.text
    assert 'data-state="pending"' in response.text and 'hx-trigger="every 1s"' in response.text
    assert response.headers["HX-Trigger"] == "statsChanged"
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.state == "pending" and stored.resolution_note == "retried by admin@example.com"
    db.session.rollback()
    # Once terminal the row stops polling.
    db.session.execute(
        Operation.__table__.update()
        .where(Operation.id == operation.id)
        .values(state="succeeded", succeeded_at=utcnow())
    )
    db.session.commit()
    row = client.get(f"/admin/partials/operations/{operation.id}/row").text
    assert 'data-state="succeeded"' in row and "hx-trigger" not in row
    again = post(client, f"/admin/operations/{make_op(state='succeeded').id}/retry")
    assert again.status_code == 409 and "not dead" in again.text


def test_resolve_with_note_records_who_and_when(client):
    operation = make_op()
    response = post(client, f"/admin/operations/{operation.id}/resolve", {"note": "refunded by hand"})
    assert response.status_code == 200 and "resolved by admin@example.com" in response.text
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.resolved_by == "admin@example.com" and stored.resolution_note == "refunded by hand"
    assert stored.resolved_at is not None
    db.session.rollback()
    assert post(client, f"/admin/operations/{operation.id}/resolve").status_code == 409
    assert post(client, "/admin/operations/999999/resolve").status_code == 404


def test_cancel_a_scheduled_operation(client):
    later = utcnow() + timedelta(days=1)
    operation = make_op(state="scheduled", run_at=later, next_attempt_at=later)
    assert operation.id in _ids(client.get("/admin/failed-operations?status=scheduled").text)
    response = post(client, f"/admin/operations/{operation.id}/cancel")
    assert response.status_code == 200 and 'data-state="cancelled"' in response.text
    assert post(client, f"/admin/operations/{operation.id}/cancel").status_code == 409


def test_bulk_selected_retry_and_resolve(client):
    first, second, third = make_op(), make_op(), make_op(state="succeeded")
    response = post(client, "/admin/operations/bulk", {"action": "retry", "ids": [first.id, third.id]})
    assert response.status_code == 200 and "Retried 1 operation" in response.text and "1 skipped" in response.text
    assert "opsChanged" in response.headers["HX-Trigger"]
    response = post(client, "/admin/operations/bulk", {"action": "resolve", "ids": [second.id], "note": "dup"})
    assert "Resolved 1 operation" in response.text
    states = {op.id: (op.state, op.resolution_note) for op in queries.get_operations([first.id, second.id])}
    assert states == {first.id: ("pending", "retried by admin@example.com"), second.id: ("dead", "dup")}
    assert post(client, "/admin/operations/bulk", {"action": "retry"}).status_code == 400
    assert post(client, "/admin/operations/bulk", {"action": "explode", "ids": [1]}).status_code == 400


# --- retry everything matching: the snapshot ----------------------------------------------


def test_bulk_job_acts_on_the_snapshot_shown_not_later_arrivals(client):
    shown = [make_op(kind="webhook", error="Database down") for _ in range(3)]
    make_op(kind="email")  # does not match the filter
    preview = post(client, "/admin/bulk-jobs", {"kind": "webhook", "status": "unresolved"})
    assert preview.status_code == 200 and "Retry 3 operations" in preview.text
    job_id = int(re.search(r"bulk-job-(\d+)", preview.text).group(1))
    late = make_op(kind="webhook", error="Database down")  # dies after the admin saw the count
    started = post(client, f"/admin/bulk-jobs/{job_id}/start")
    assert started.status_code == 200 and 'hx-trigger="every 1s"' in started.text
    assert post(client, f"/admin/bulk-jobs/{job_id}/start").status_code == 409
    job = bulk.get_job(job_id)
    assert job.state == "queued" and job.total == 3 and job.operation_id
    # The worker's half: run the admin.bulk_retry operation the way a worker would.
    assert runner.execute(job.operation_id).outcome == "succeeded"
    job = bulk.get_job(job_id)
    assert (job.state, job.processed, job.succeeded, job.skipped) == ("done", 3, 3, 0)
    states = {op.id: op.state for op in queries.get_operations([*(op.id for op in shown), late.id])}
    assert [states[op.id] for op in shown] == ["pending"] * 3 and states[late.id] == "dead"
    progress = client.get(f"/admin/partials/bulk-jobs/{job_id}")
    assert "3 of 3 processed" in progress.text and "opsChanged" in progress.headers["HX-Trigger"]


def test_bulk_job_cancel_stops_between_batches(sqlite_app):
    ops = [make_op() for _ in range(5)]
    job = bulk.create_draft(Filters(), by="admin@example.com")
    bulk.start(job.id, by="admin@example.com")
    bulk.cancel(job.id)
    result = bulk.run_job(job.id, "admin@example.com", batch_size=2)
    assert result.state == "cancelled" and result.processed == 0
    assert {op.state for op in queries.get_operations([op.id for op in ops])} == {"dead"}
    draft = bulk.create_draft(Filters(), by="admin@example.com")
    assert bulk.cancel(draft.id).state == "cancelled"
    with pytest.raises(bulk.BulkError):
        bulk.start(draft.id, by="admin@example.com")


def test_bulk_job_resumes_after_its_cursor(sqlite_app):
    ops = [make_op() for _ in range(5)]
    job = bulk.create_draft(Filters(), by="a")
    bulk.start(job.id, by="a")
    db.session.execute(
        BulkJob.__table__.update()
        .where(BulkJob.id == job.id)
        .values(cursor=sorted(op.id for op in ops)[1], processed=2)
    )
    db.session.commit()
    result = bulk.run_job(job.id, "a", batch_size=2)
    assert (result.state, result.processed, result.succeeded) == ("done", 5, 3)


# --- issues / fingerprints ----------------------------------------------------------------


def test_fingerprint_normalisation():
    a = "550 5.1.1 <bob.smith@example.org>: Recipient 123e4567-e89b-12d3-a456-426614174000 rejected after 30s (id 9f3a2c91d0e4)"
    b = "550 5.1.1 <x@y.io>: Recipient 00000000-0000-0000-0000-0000000000ff rejected after 2s (id deadbeef1234)"
    assert normalise_error(a) == "<n> <n> <<email>>: Recipient <uuid> rejected after <n>s (id <hex>)"
    assert normalise_error("took 1.5 s, 20 ms") == "took <n> s, <n> ms"
    assert fingerprint_of("SMTPError", a) == fingerprint_of("SMTPError", b)
    assert fingerprint_of("SMTPError", a) != fingerprint_of("OtherError", a)
    assert fingerprint_of("E", "No purchase for cs_test_a1B2c3") == fingerprint_of("E", "No purchase for cs_test_ZZ9")
    assert fingerprint_of("E", "timeout") != fingerprint_of("E", "refused")
    assert normalise_error("Stripe 0xFF retrieving pi_3Nx8KdL2") == "Stripe <hex> retrieving <id>"


def test_issues_group_by_fingerprint_and_act_on_groups(client):
    timeouts = [make_op(error=f"SMTP timeout after {n}s") for n in (5, 17, 30)]
    refused = make_op(error="Connection refused by 10.0.0.1")
    html = client.get("/admin/issues").text
    assert "SMTP timeout after &lt;n&gt;s" in html and re.search(r'<td class="num">3</td>', html)
    key = fingerprint_of("TransientError", "SMTP timeout after 1s")
    listed = client.get(f"/admin/failed-operations?fingerprint={key}").text
    assert set(_ids(listed)) == {op.id for op in timeouts}
    preview = post(client, f"/admin/issues/{key}/retry", {"status": "unresolved"})
    assert "Retry 3 operations" in preview.text
    response = post(client, f"/admin/issues/{key}/resolve", {"note": "provider outage"})
    assert "Resolved 3 operations" in response.text
    states = {
        op.id: op.resolved_at is not None
        for op in queries.get_operations([*(op.id for op in timeouts), refused.id])
    }
    assert states == {**{op.id: True for op in timeouts}, refused.id: False}


# --- export -------------------------------------------------------------------------------


def test_exports_stream_the_filtered_set(client):
    email = make_op(kind="email", error="=cmd|' /C calc'!A0")
    make_op(kind="webhook")
    response = client.get("/admin/failed-operations/export.csv?kind=email")
    assert response.is_streamed and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == [email.id]
    assert rows[0]["error_message"].startswith("'=")  # no spreadsheet formula injection
    assert json.loads(rows[0]["payload"]) == email.payload
    response = client.get("/admin/failed-operations/export.json?status=all")
    assert response.is_streamed
    data = json.loads(response.get_data(as_text=True))
    assert len(data) == 2 and {"fingerprint", "payload", "error_message"} <= set(data[0])
    assert client.get("/admin/failed-operations/export.xml").status_code == 404


# --- operations health --------------------------------------------------------------------


def test_health_metrics_grading_and_banner(app):
    client = app.test_client()
    admins.create_admin("admin@example.com", PASSWORD)
    login(client)
    for _ in range(3):
        make_op(state="succeeded", kind="email")
    make_op(kind="email")  # 75 %: red (< 90)
    make_op(state="succeeded", kind="webhook", attempts=3)  # retried, 100 %
    html = client.get("/admin/operations-health?window=24h").text
    assert 'data-metric="email_delivery_rate" data-status="red"' in html
    assert 'data-metric="webhook_success_rate" data-status="green"' in html
    assert re.search(r'class="banner critical".*Email delivery rate', html, re.S)
    assert "kind=email" in html and "trend-data" in html and "chart.umd.min.js" in html
    assert "every 10s [document.visibilityState === &#39;visible&#39;]" in html
    cards = client.get("/admin/partials/health/cards?window=24h")
    assert cards.status_code == 200 and "<html" not in cards.text and "75%" in cards.text
    breakdown = client.get("/admin/partials/health/breakdown?window=7d").text
    assert "email.welcome" in breakdown
    trend = json.loads(
        re.search(r'id="trend-data">(.*?)</script>', client.get("/admin/partials/health/trend?window=24h").text).group(
            1
        )
    )
    assert len(trend["labels"]) in (24, 25) and len(trend["successes"]) == len(trend["labels"])
    assert client.get("/admin/operations-health?window=1y").status_code == 400
    status = client.get("/admin/partials/health/status").text
    assert "Heartbeats" in status and "Email provider circuits" in status


def test_health_page_judges_job_heartbeats_as_healthz_does(client, sqlite_app):
    from webapp.services.engine import periodic

    def states(html: str) -> dict:
        heartbeats = html.split("Email provider circuits")[0]
        return dict(re.findall(r'<td class="mono">(\w+)</td>.*?data-state="(\w+)"', heartbeats, re.S))

    # Nothing has run yet: every configured job is stale, as /healthz says, not just the ones with a row.
    before = states(client.get("/admin/partials/health/status").text)
    assert before == {name: "stale" for name in client.get("/healthz").json["jobs"]}
    assert set(before) == {"reconciler", "auto_requeue", "cleanup", "daily_report", "checks"}
    periodic.run_exclusive("daily_report", lambda now: "ok", interval_seconds=86_400, lease_seconds=60, clock=utcnow)
    after = states(client.get("/admin/partials/health/status").text)
    assert after["daily_report"] == "fresh" and after["reconciler"] == "stale"


def test_health_trend_counts_attempts_per_hour(app):
    operation = make_op(state="succeeded")
    now = utcnow()
    db.session.add_all(
        [
            OperationAttempt(
                operation_id=operation.id, number=1, started_at=now - timedelta(minutes=1), outcome="failed"
            ),
            OperationAttempt(
                operation_id=operation.id, number=2, started_at=now - timedelta(minutes=1), outcome="succeeded"
            ),
            OperationAttempt(operation_id=operation.id, number=3, started_at=now - timedelta(hours=3), outcome="dead"),
        ]
    )
    db.session.commit()
    from webapp.services.monitoring import health_page

    trend = health_page.trend("24h", now=now)
    assert sum(trend["successes"]) == 1 and sum(trend["failures"]) == 2
    recent = trend["labels"].index((now - timedelta(minutes=1)).strftime("%Y-%m-%d %H:00"))
    assert trend["successes"][recent] == 1 and trend["failures"][recent] == 1
    metrics = {m.key: m for m in health_page.health_metrics("24h", app.config["HEALTH_THRESHOLDS"], now=now)}
    assert metrics["email_delivery_rate"].value == 100.0 and metrics["avg_time_to_success"].value is None


# --- admin JSON API -----------------------------------------------------------------------


def test_admin_api_requires_an_admin_token(sqlite_app):
    client = sqlite_app.test_client()
    storefront = tokens.create_token("shop", "storefront").raw
    revoked = tokens.create_token("old", "admin")
    tokens.revoke_token(revoked.token.id)
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {storefront}"},
        {"Authorization": f"Bearer {revoked.raw}"},
        {"Authorization": "Basic abc"},
    ):
        response = client.get("/api/admin/operations", headers=headers)
        assert response.status_code == 401
        assert response.json["error"] == "unauthorized" and response.json["message"]


def test_admin_api_shapes(sqlite_app):
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    dead = [make_op(kind="webhook", error="Database down") for _ in range(3)]
    make_op(state="succeeded")

    listed = client.get("/api/admin/operations?kind=webhook&limit=2", headers=auth).json
    assert len(listed["operations"]) == 2 and listed["next_cursor"]
    rest = client.get(f"/api/admin/operations?kind=webhook&limit=2&cursor={listed['next_cursor']}", headers=auth).json
    assert len(rest["operations"]) == 1 and rest["next_cursor"] is None
    one = client.get(f"/api/admin/operations/{dead[0].id}", headers=auth).json
    assert one["id"] == dead[0].id and "attempts_log" in one and one["error_message"] == "Database down"

    retried = client.post(f"/api/admin/operations/{dead[0].id}/retry", headers=auth)
    assert retried.status_code == 200 and retried.json["state"] == "pending"
    conflict = client.post(f"/api/admin/operations/{dead[0].id}/retry", headers=auth)
    assert conflict.status_code == 409 and conflict.json["error"] == "invalid_state"
    resolved = client.post(f"/api/admin/operations/{dead[1].id}/resolve", json={"note": "handled"}, headers=auth)
    assert resolved.json["resolved_by"] == "token:ops" and resolved.json["resolution_note"] == "handled"
    assert (
        client.post(
            f"/api/admin/operations/{dead[1].id}/resolve", data="[1]", headers=auth, content_type="application/json"
        ).json["error"]
        == "invalid_json"
    )

    bulk_response = client.post("/api/admin/operations/bulk-retry", json={"filters": {"kind": "webhook"}}, headers=auth)
    assert bulk_response.status_code == 202
    job = bulk_response.json["bulk_job"]
    assert job["total"] == 1 and job["state"] == "queued"
    assert client.get(f"/api/admin/bulk-jobs/{job['id']}", headers=auth).json["bulk_job"]["id"] == job["id"]

    health = client.get("/api/admin/queue-health", headers=auth).json
    assert {"healthy", "metrics", "queue", "stats", "timestamp"} <= set(health)
    stats = client.get("/api/admin/delivery-stats?range=24h", headers=auth).json
    assert stats["range"] == "24h" and stats["summary"]["total"] == 5 and stats["summary"]["dead"] == 2
    assert stats["by_name"]["admin.bulk_retry"]["total"] == 1  # the bulk job is an operation too
    failures = client.get("/api/admin/recent-failures?limit=20", headers=auth).json
    assert failures["count"] == len(failures["failures"]) == 2
    dlq = client.get("/api/admin/dead-letter-queue", headers=auth).json
    # dead[0] was retried, dead[1] resolved; dead[2] waits in the (not yet run) bulk job.
    assert dlq["count"] == 1 and dlq["dead_letters"][0]["id"] == dead[2].id
    assert dlq["dead_letters"][0]["payload"] == dead[2].payload and dlq["dead_letters"][0]["error_stack"]
    metrics = client.get("/api/admin/health?window=1h", headers=auth).json
    assert {m["key"] for m in metrics["metrics"]} >= {"email_delivery_rate", "queue_depth"}

    for url, code in (
        ("/api/admin/operations?kind=zzz", "invalid_filter"),
        ("/api/admin/operations?limit=0", "invalid_limit"),
        ("/api/admin/operations?cursor=bad", "invalid_cursor"),
        ("/api/admin/operations/424242", "not_found"),
        ("/api/admin/delivery-stats?range=9y", "invalid_range"),
    ):
        response = client.get(url, headers=auth)
        assert 400 <= response.status_code < 500 and response.json["error"] == code, url
        assert set(response.json) == {"error", "message"}
    assert client.delete("/api/admin/operations/1", headers=auth).json["error"] == "method_not_allowed"


# --- demo data ----------------------------------------------------------------------------


def test_demo_data_fills_an_empty_database_only(sqlite_app):
    cli = sqlite_app.test_cli_runner()
    result = cli.invoke(args=["demo-data"])
    assert result.exit_code == 0, result.output
    kinds = set(db.session.execute(select(Operation.kind).where(Operation.state == "dead")).scalars())
    states = set(db.session.execute(select(Operation.state)).scalars())
    db.session.rollback()
    assert {"email", "webhook"} <= kinds and {"succeeded", "dead", "scheduled"} <= states
    assert queries.dead_letter_stats()["total"] > 5
    assert len(queries.issues(Filters(status="all")).issues) >= 4
    assert (
        db.session.execute(
            select(func.count())
            .select_from(Operation)
            .where(Operation.state == "dead", Operation.error_fingerprint.is_(None))
        ).scalar_one()
        == 0
    )
    again = cli.invoke(args=["demo-data"])
    assert again.exit_code != 0 and "EMPTY" in again.output.upper()


def test_make_app_keeps_csrf_enabled(sqlite_backend):
    app = make_app(sqlite_backend)
    assert app.config["WTF_CSRF_ENABLED"] is True and app.config["WTF_CSRF_TIME_LIMIT"] is None


def test_front_end_packages_install_from_the_lock_file(tmp_path, monkeypatch):
    import shutil

    from webapp import frontend

    static = tmp_path / "static"
    static.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(frontend.STATIC / name, static / name)
    assert frontend.ensure_installed(static) is True
    assert (static / "node_modules" / "htmx.org" / "dist" / "htmx.min.js").exists()
    assert (static / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js").exists()
    assert frontend.ensure_installed(static) is False  # present: nothing to do
    shutil.rmtree(static / "node_modules")
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm anywhere
    with pytest.raises(frontend.FrontEndError, match="npm is needed"):
        frontend.ensure_installed(static)


def test_bulk_job_whose_operation_dies_shows_as_failed(sqlite_app, monkeypatch):
    from webapp.domain.errors import PermanentError

    make_op()
    job = bulk.start(bulk.create_draft(Filters(), by="a").id, by="a")

    def broken(job_id, by, **kwargs):
        raise PermanentError("snapshot table is unreadable")

    monkeypatch.setattr(bulk, "run_job", broken)
    assert runner.execute(job.operation_id).outcome == "dead"
    failed = bulk.get_job(job.id)
    assert failed.state == "failed" and failed.error == "snapshot table is unreadable" and failed.finished


# --- stored fingerprints, grouped in SQL ----------------------------------------------------


def test_the_engine_stores_the_fingerprint_when_an_operation_dies(app):
    from webapp.services.engine import operations

    operation = operations.create_operation("test.permanent", {}, idempotency_key="fp-1")
    db.session.commit()
    assert runner.execute(operation.id).outcome == "dead"
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.error_message and stored.error_fingerprint == fingerprint_of(stored.error_class, stored.error_message)
    db.session.rollback()
    # The Issues view and the fingerprint filter find it by the stored value.
    found = queries.issues(Filters(status="all"))
    assert [(issue.fingerprint, issue.count) for issue in found.issues] == [(stored.error_fingerprint, 1)]
    assert [
        op.id for op in queries.list_operations(Filters(status="all", fingerprint=stored.error_fingerprint)).rows
    ] == [operation.id]


def test_issues_count_every_failure_and_say_how_many_groups_are_shown(app):
    for n in range(5):
        make_op(error=f"SMTP timeout after {n}s", name="email.welcome" if n % 2 else "email.refund")
    for n in range(3):
        make_op(error=f"Connection refused by 10.0.0.{n}")
    make_op(error="Mailbox full")
    make_op(error="Mailbox full", resolved_at=utcnow(), resolved_by="x")  # not in "unresolved"
    found = queries.issues(Filters(), shown=2)
    assert (found.total_groups, found.total_failures) == (3, 9)
    top = found.issues
    assert [issue.count for issue in top] == [5, 3]
    assert top[0].names == {"email.welcome", "email.refund"} and top[0].sample == "SMTP timeout after <n>s"
    assert top[0].first_seen <= top[0].last_seen
    everything = queries.issues(Filters(status="all"))
    assert {issue.sample: (issue.count, issue.unresolved) for issue in everything.issues}["Mailbox full"] == (2, 1)


def test_issues_page_shows_totals_and_rejects_a_malformed_fingerprint(client, sqlite_app):
    make_op(error="SMTP timeout after 3s")
    make_op(error="Database down")
    html = client.get("/admin/issues").text
    assert "2 failures in 2 groups." in html
    assert client.get("/admin/failed-operations?fingerprint=zz").status_code == 400
    assert client.get("/admin/failed-operations?fingerprint=none").status_code == 200


def test_resolving_a_group_leaves_failures_that_arrived_after_the_page_was_shown(client):
    shown = [make_op(error=f"SMTP timeout after {n}s") for n in (1, 2)]
    html = client.get("/admin/issues").text
    as_of = re.search(r'name="until" value="([^"]+)"', html).group(1)
    late = make_op(error="SMTP timeout after 9s", dead_ago=timedelta(seconds=-5))  # dies after the page
    key = fingerprint_of("TransientError", "SMTP timeout after 1s")
    response = post(client, f"/admin/issues/{key}/resolve", {"note": "provider outage", "until": as_of})
    assert "Resolved 2 operations" in response.text
    resolved = {
        op.id: op.resolved_at is not None for op in queries.get_operations([*(op.id for op in shown), late.id])
    }
    assert resolved == {shown[0].id: True, shown[1].id: True, late.id: False}
    too_long = post(client, f"/admin/issues/{key}/resolve", {"note": "x" * 2001, "until": as_of})
    assert too_long.status_code == 400


def test_refingerprint_command_repairs_stale_fingerprints(sqlite_app):
    operation = make_op(error="SMTP timeout after 3s")
    db.session.execute(
        Operation.__table__.update().where(Operation.id == operation.id).values(error_fingerprint="0000000000000000")
    )
    db.session.commit()
    result = sqlite_app.test_cli_runner().invoke(args=["refingerprint"])
    assert result.exit_code == 0 and "refingerprinted 1 operation" in result.output
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.error_fingerprint == fingerprint_of("TransientError", "SMTP timeout after 3s")


def test_migration_0006_fingerprints_existing_failures(tmp_path):
    import flask_migrate
    from sqlalchemy import text

    from webapp import create_app

    app = create_app(_sqlite_backend(tmp_path).config())  # an empty database, migrated step by step here
    with app.app_context():
        flask_migrate.upgrade(revision="0005")
        db.session.execute(
            text(
                "INSERT INTO operations (kind, name, payload, idempotency_key, state, attempts, max_attempts, "
                "next_attempt_at, created_at, updated_at, dead_at, error_class, error_message) VALUES "
                "('email', 'email.welcome', '{}', 'old-1', 'dead', 4, 4, '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'SMTPError', "
                "'421 busy, try in 30s')"
            )
        )
        db.session.commit()
        flask_migrate.upgrade()
        stored = db.session.execute(text("SELECT error_fingerprint FROM operations")).scalar_one()
        assert stored == fingerprint_of("SMTPError", "421 busy, try in 30s")
        db.session.remove()
        db.engine.dispose()


# --- the queries stay on indexes (so they stay fast at a million rows) ------------------------


def explain(query) -> list[str]:
    """The plan of ``query`` as run with bound parameters: SQLite's EXPLAIN QUERY PLAN lines, or
    PostgreSQL's EXPLAIN with sequential scans and sorts made prohibitively expensive, so any
    plan that still needs one has no index to use."""
    connection = db.session.connection()
    compiled = query.compile(connection)
    params = compiled.construct_params()
    if connection.dialect.name == "sqlite":
        values = tuple(
            str(params[name]) if isinstance(params[name], datetime) else params[name] for name in compiled.positiontup
        )
        return [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, values)]
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    connection.exec_driver_sql("SET LOCAL enable_sort = off")
    return [row[0] for row in connection.exec_driver_sql("EXPLAIN " + compiled.string, params)]


def assert_indexed(plan: list[str], *, grouping: bool = False) -> None:
    """No full scan of ``operations`` and no sort of its rows for ORDER BY."""
    text = "\n".join(plan)
    assert "Seq Scan on operations" not in text, text
    assert not any(line.startswith("SCAN operations") for line in plan), text
    assert "TEMP B-TREE FOR ORDER BY" not in text, text
    if not grouping:
        # PostgreSQL: an incremental sort (on top of an index's order, for the id tie-break) is fine.
        assert not any(line.strip().startswith("->  Sort") or line.startswith("Sort") for line in plan), text


FILTER_COMBINATIONS = [
    {},
    {"kind": "alert"},
    {"name": "email.welcome"},
    {"kind": "email", "name": "email.welcome"},
    {"status": "all"},
    {"status": "resolved"},
    {"status": "all", "kind": "webhook"},
    {"range": "24h"},
    {"status": "all", "name": "x", "range": "7d"},
    {"fingerprint": "0123456789abcdef"},
    {"status": "retrying"},
    {"status": "scheduled"},
    {"q": "timeout"},
]


@pytest.mark.parametrize(
    "combination", FILTER_COMBINATIONS, ids=lambda c: "&".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_every_filter_pages_through_an_index(app, combination):
    make_op()
    filters = queries.parse_filters(combination)
    column = queries._sort_column(filters)
    later = utcnow()
    query = select(Operation).where(*queries.filter_conditions(filters))
    if filters.dead_only:  # page 2 of a keyset walk, exactly as list_operations builds it
        query = query.where(or_(column < later, and_(column == later, Operation.id < 10**9)))
        query = query.order_by(column.desc(), Operation.id.desc())
    else:
        query = query.where(or_(column > later, and_(column == later, Operation.id > 0)))
        query = query.order_by(column.asc(), Operation.id.asc())
    assert_indexed(explain(query.limit(51)))


@pytest.mark.parametrize("status", ["unresolved", "all"])
def test_issues_group_without_scanning_the_table(app, status):
    make_op()
    filters = Filters(status=status)
    fingerprint = func.coalesce(Operation.error_fingerprint, "none")
    query = (
        select(fingerprint, Operation.name, func.count(), func.min(Operation.dead_at))
        .where(*queries.filter_conditions(filters))
        .group_by(fingerprint, Operation.name)
    )
    assert_indexed(explain(query), grouping=True)
    # And the function builds that same shape: its result agrees with a plain count.
    assert queries.issues(filters).total_failures == queries.count_matching(filters)


# --- every console URL needs a login; proxies; a long-open page ------------------------------


def _sample_url(rule) -> str:
    """A URL that matches ``rule`` (1 for integer parts, "csv" for the others)."""
    values = {
        name: (1 if type(rule._converters[name]).__name__ == "IntegerConverter" else "csv") for name in rule.arguments
    }
    return rule.build(values, append_unknown=False)[1]


def test_every_admin_route_in_the_url_map_needs_a_login(sqlite_app, admin):
    client = sqlite_app.test_client()
    token = csrf_from(client.get("/admin/login").text)
    checked = 0
    for rule in sqlite_app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.login":
            continue
        url = _sample_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, headers={"X-CSRFToken": token})
            assert response.status_code in (302, 401), (method, url, response.status_code)
            if response.status_code == 302:
                assert method == "GET" and "/admin/login" in response.headers["Location"], (method, url)
            checked += 1
    # Every page, partial and action in the map (not a hand-kept list): 25 when this was written.
    assert checked >= 25


def test_behind_a_trusted_proxy_https_and_client_address_come_from_its_headers(sqlite_backend):
    app = make_app(sqlite_backend, TRUSTED_PROXY_COUNT=1)
    app.test_client_class = IsolatedClient
    with app.app_context():
        admins.create_admin("admin@example.com", PASSWORD)
        proxied = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "ops.example.com",
            "X-Forwarded-For": "203.0.113.9",
            "Referer": "https://ops.example.com/admin/login",
        }
        client = app.test_client()
        page = client.get("/admin/login", headers=proxied)
        # Over HTTPS, Flask-WTF also insists on a same-site Referer: the proxied host must be honoured.
        no_referer = {k: v for k, v in proxied.items() if k != "Referer"}
        refused = client.post("/admin/login", headers=no_referer, data={"csrf_token": csrf_from(page.text)})
        assert refused.status_code == 400 and "referrer" in refused.text.lower()
        response = client.post(
            "/admin/login",
            headers=proxied,
            data={"email": "admin@example.com", "password": PASSWORD, "csrf_token": csrf_from(page.text)},
        )
        assert response.status_code == 302, response.text
        cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        # The throttle counts per real client address, not per proxy.
        for _ in range(5):
            admins.log_in("admin@example.com", "wrong", "203.0.113.9")
        assert login(app.test_client(), headers=proxied).status_code == 429
        other = {**proxied, "X-Forwarded-For": "198.51.100.7"}
        assert login(app.test_client(), headers=other).status_code == 302
        db.session.remove()
        db.engine.dispose()


def test_without_trusted_proxies_forwarded_headers_are_ignored(sqlite_app, admin):
    client = sqlite_app.test_client()
    response = login(client, headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 302 and "Secure" not in response.headers["Set-Cookie"]
    assert db.session.execute(select(FailedLogin)).scalars().all() == []
    for _ in range(5):  # failures are counted against the socket's address, whatever the header says
        login(sqlite_app.test_client(), password="wrong", headers={"X-Forwarded-For": "203.0.113.9"})
    db.session.rollback()
    assert {row.ip for row in db.session.execute(select(FailedLogin)).scalars()} == {"127.0.0.1"}
    db.session.rollback()


def test_session_cookie_secure_can_be_forced(sqlite_backend):
    app = make_app(sqlite_backend, SESSION_COOKIE_SECURE=True)
    app.test_client_class = IsolatedClient
    with app.app_context():
        admins.create_admin("admin@example.com", PASSWORD)
        response = login(app.test_client())
        assert response.status_code == 302 and "Secure" in response.headers["Set-Cookie"]
        db.session.remove()
        db.engine.dispose()


def test_a_csrf_token_from_a_page_opened_days_ago_still_works(client, sqlite_app):
    """The token is signed with a timestamp; with WTF_CSRF_TIME_LIMIT=None its age never matters."""
    from flask import session
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    class SignedLongAgo(TimestampSigner):
        def get_timestamp(self):  # what the signer would have written three days ago
            return super().get_timestamp() - 3 * 86400

    operation = make_op()
    with client.session_transaction() as stored:
        raw = stored["csrf_token"]
    old_token = URLSafeTimedSerializer(sqlite_app.secret_key, salt="wtf-csrf-token", signer=SignedLongAgo).dumps(raw)
    # The same signature with a time limit would be refused: the test can tell old from new.
    from flask_wtf.csrf import validate_csrf
    from wtforms import ValidationError

    with sqlite_app.test_request_context():
        session["csrf_token"] = raw
        with pytest.raises(ValidationError, match="expired"):
            validate_csrf(old_token, time_limit=3600)
    response = client.post(
        f"/admin/operations/{operation.id}/retry", headers={"X-CSRFToken": old_token, "HX-Request": "true"}
    )
    assert response.status_code == 200, response.text
    assert 'data-state="pending"' in response.text


# --- bad input is a precise 4xx, never a 500 --------------------------------------------------

HUGE = "9" * 25
BAD_PAGE_URLS = [
    f"/admin/partials/operations/{HUGE}/details",
    f"/admin/partials/operations/{HUGE}/row",
    f"/admin/partials/bulk-jobs/{HUGE}",
    "/admin/failed-operations?q=a%00b",
    "/admin/failed-operations?name=a%00b",
    "/admin/failed-operations?since=9999-12-31T23:59:59-14:00",
    "/admin/failed-operations?until=0001-01-01T00:00+14:00",
    "/admin/failed-operations?cursor=_5",
    "/admin/failed-operations?cursor=2026-01-01T00:00:00_" + HUGE,
    "/admin/issues?q=%00",
    "/admin/failed-operations/export.csv?q=%00",
    "/admin/operations-health?window=%00",
]
BAD_ACTIONS = [
    f"/admin/operations/{HUGE}/retry",
    f"/admin/operations/{HUGE}/resolve",
    f"/admin/bulk-jobs/{HUGE}/start",
    "/admin/bulk-jobs/424242/start",
    "/admin/bulk-jobs/424242/cancel",
    "/admin/issues/zz/retry",
    "/admin/issues/zz/resolve",
]
BAD_API = [
    ("GET", f"/api/admin/operations/{HUGE}"),
    ("POST", f"/api/admin/operations/{HUGE}/retry"),
    ("GET", "/api/admin/operations?limit=%C2%B2"),
    ("GET", "/api/admin/operations?limit=99999999999999999999"),
    ("GET", "/api/admin/operations?q=%00"),
    ("GET", "/api/admin/dead-letter-queue?since=9999-12-31T23:59:59-14:00"),
    ("GET", f"/api/admin/bulk-jobs/{HUGE}"),
    ("POST", "/api/admin/bulk-jobs/424242/cancel"),
    ("GET", "/api/admin/recent-failures?limit=x"),
    ("GET", "/api/admin/health?window=%00"),
]


def test_bad_input_answers_4xx_never_500(app):
    admins.create_admin("admin@example.com", PASSWORD)
    client = app.test_client()
    login(client)
    csrf = csrf_from(client.get("/admin/failed-operations").text)
    for url in BAD_PAGE_URLS:
        response = client.get(url)
        assert 400 <= response.status_code < 500, (url, response.status_code)
    for url in BAD_ACTIONS:
        response = client.post(url, headers={"X-CSRFToken": csrf, "HX-Request": "true"}, data={"status": "unresolved"})
        assert 400 <= response.status_code < 500, (url, response.status_code)
    assert client.post("/admin/bulk-jobs/424242/start", headers={"X-CSRFToken": csrf}).status_code == 404
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    for method, url in BAD_API:
        response = client.open(url, method=method, headers=auth)
        assert 400 <= response.status_code < 500, (method, url, response.status_code)
        assert set(response.json) == {"error", "message"}, url
    response = client.post("/api/admin/operations/bulk-retry", headers=auth, json={"filters": {"q": "\x00"}})
    assert response.status_code == 400 and response.json["error"] == "invalid_filter"


def test_admin_tokens_made_and_revoked_by_the_cli_are_stored_hashed(sqlite_app):
    from webapp.models import ApiToken

    cli = sqlite_app.test_cli_runner()
    created = cli.invoke(args=["tokens", "create", "--scope", "admin", "--name", "oncall"])
    assert created.exit_code == 0, created.output
    raw = created.output.strip().splitlines()[-1]
    assert raw.startswith("bst_ad_")
    stored = db.session.execute(select(ApiToken)).scalar_one()
    assert stored.token_hash == tokens.hash_token(raw) and raw not in (stored.token_hash, stored.prefix)
    db.session.rollback()
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/admin/queue-health", headers=auth).status_code == 200
    listed = cli.invoke(args=["tokens", "list"])
    assert "oncall" in listed.output and raw not in listed.output
    revoked = cli.invoke(args=["tokens", "revoke", str(stored.id)])
    assert revoked.exit_code == 0, revoked.output
    response = client.get("/api/admin/queue-health", headers=auth)
    assert response.status_code == 401 and response.json["error"] == "unauthorized"


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
