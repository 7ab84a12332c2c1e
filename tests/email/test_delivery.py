"""Email delivery through the engine (engine.execute + an injected clock) against real servers:
failover, error handling, circuit breakers, rate limits, the email log and purchase fulfilment."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from tests.conftest import make_app
from tests.support.email import Clock, attempts_of, drain, email_log, load, make_purchase, purchase_state, queue, run
from tests.support.smtp import PERMANENT, TEMPORARY
from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.services.email import UnknownTemplate, circuits, queue_email, ratelimit
from webapp.services.email.render import message_id
from webapp.services.engine import operations

SENDER = "Shop <noreply@shop.example>"


@pytest.fixture
def email_app(sqlite_backend, smtp_server, httpserver):
    """Build the app (SQLite) with email settings pointing at the test servers, inside its context."""
    contexts = []

    def build(backend=None, **config):
        settings = {
            "EMAIL_FROM": SENDER,
            "EMAIL_PROVIDERS": "smtp",
            "SMTP_URL": smtp_server.url,
            "RESEND_API_KEY": "re_key",
            "RESEND_API_BASE": httpserver.url_for("/resend"),
            "POSTMARK_SERVER_TOKEN": "pm_token",
            "POSTMARK_API_BASE": httpserver.url_for("/postmark"),
            "EMAIL_TIMEOUT_SECONDS": 2.0,
        }
        settings.update(config)
        app = make_app(backend or sqlite_backend, **settings)
        context = app.app_context()
        context.push()
        contexts.append(context)
        return app

    yield build
    for context in reversed(contexts):
        db.session.remove()
        db.engine.dispose()
        context.pop()


def resend_ok(httpserver, message="re_1"):
    httpserver.expect_request("/resend/emails", method="POST").respond_with_json({"id": message})


def resend_calls(httpserver) -> int:
    return sum(1 for request, _ in httpserver.log if request.path == "/resend/emails")


# --- queueing ---------------------------------------------------------------------------------


def test_queue_email_joins_the_callers_transaction(email_app):
    email_app()
    queue_email("welcome", "a@example.com", {}, idempotency_key="welcome-1")
    db.session.rollback()
    assert operations.find_by_key("welcome-1") is None

    first = queue("welcome", "a@example.com", key="welcome-2", context={"customer_name": "Ada"}, purchase_id=None)
    again = queue("welcome", "a@example.com", key="welcome-2")
    operation = load(first)

    assert again == first
    assert (operation.name, operation.kind, operation.max_attempts) == ("email.welcome", "email", 4)
    assert operation.payload == {
        "to": "a@example.com",
        "template": "welcome",
        "context": {"customer_name": "Ada"},
        "purchase_id": None,
    }
    with pytest.raises(UnknownTemplate, match="welcom"):
        queue_email("welcom", "a@example.com", {}, idempotency_key="typo")


# --- sending, idempotency, the email log -------------------------------------------------------


def test_smtp_message_id_is_the_same_on_every_attempt(email_app, smtp_server):
    email_app()
    clock = Clock()
    operation_id = queue("welcome", key="stable-id-1")
    smtp_server.set_mode(TEMPORARY)

    assert run(operation_id, clock).outcome == "retrying"
    smtp_server.set_mode("accept")
    clock.now = load(operation_id).next_attempt_at
    assert run(operation_id, clock).outcome == "succeeded"

    expected = message_id("stable-id-1", SENDER)
    assert smtp_server.offered == [expected, expected]
    [received] = smtp_server.received()
    assert received.message["Message-ID"] == expected
    assert received.message["Subject"] == "Welcome, Ada!"
    rows = email_log(operation_id)
    assert [(r.attempt, r.provider, r.status) for r in rows] == [(1, "smtp", "failed"), (2, "smtp", "sent")]
    assert "451" in rows[0].error and rows[1].provider_message_id == "Q00001"
    assert rows[1].to_address == "buyer@example.com" and rows[1].template == "welcome"
    # The operation keeps who accepted it and the provider's id, for "the customer says no email came".
    assert load(operation_id).result == {
        "provider": "smtp",
        "message_id": "Q00001",
        "to": "buyer@example.com",
        "template": "welcome",
    }


def test_a_send_already_logged_is_not_repeated(email_app, smtp_server):
    email_app()
    clock = Clock()
    operation_id = queue("welcome")
    run(operation_id, clock)
    assert len(smtp_server.received()) == 1
    # The worker died after the provider accepted but before "succeeded" was written.
    db.session.execute(
        db.text("UPDATE operations SET state='pending', succeeded_at=NULL WHERE id=:id"), {"id": operation_id}
    )
    db.session.commit()

    assert run(operation_id, clock).outcome == "succeeded"

    assert len(smtp_server.received()) == 1
    assert [r.status for r in email_log(operation_id)] == ["sent"]
    sent = email_log(operation_id)[0]
    assert load(operation_id).result == {
        "already_sent": True,
        "provider": "smtp",
        "message_id": sent.provider_message_id,
    }


def test_invalid_address_dead_letters_without_calling_a_provider(email_app, smtp_server):
    email_app()
    operation_id = queue("welcome", to="not-an-address")

    result = run(operation_id, Clock())

    operation = load(operation_id)
    assert result.outcome == "dead" and operation.attempts == 1
    assert operation.error_kind == "permanent"
    assert "invalid recipient address" in operation.error_message
    assert smtp_server.offered == [] and email_log(operation_id) == []


# --- failover ---------------------------------------------------------------------------------


def test_primary_down_fallback_sends(email_app, httpserver):
    email_app(EMAIL_PROVIDERS="smtp,resend", SMTP_URL="smtp://127.0.0.1:1")
    resend_ok(httpserver, "re_42")
    operation_id = queue("welcome")

    assert run(operation_id, Clock()).outcome == "succeeded"

    rows = email_log(operation_id)
    assert [(r.provider, r.status) for r in rows] == [("smtp", "failed"), ("resend", "sent")]
    assert "network error" in rows[0].error and rows[1].provider_message_id == "re_42"
    assert resend_calls(httpserver) == 1
    assert load(operation_id).result["provider"] == "resend" and load(operation_id).result["message_id"] == "re_42"


def test_both_down_the_attempt_fails_and_retries(email_app, httpserver):
    email_app(EMAIL_PROVIDERS="smtp,resend", SMTP_URL="smtp://127.0.0.1:1")
    httpserver.expect_ordered_request("/resend/emails").respond_with_json({"message": "boom"}, status=500)
    resend_ok(httpserver, "re_after")
    clock = Clock()
    operation_id = queue("welcome")

    assert run(operation_id, clock).outcome == "retrying"

    operation = load(operation_id)
    assert operation.attempts == 1 and operation.error_kind == "transient"
    assert "every email provider failed" in operation.error_message
    assert "smtp: network error" in operation.error_message and "resend: HTTP 500" in operation.error_message
    clock.now = operation.next_attempt_at
    assert run(operation_id, clock).outcome == "succeeded"
    assert [(r.attempt, r.provider, r.status) for r in email_log(operation_id)] == [
        (1, "smtp", "failed"),
        (1, "resend", "failed"),
        (2, "smtp", "failed"),
        (2, "resend", "sent"),
    ]


def test_a_rejected_message_stops_failover_and_dead_letters(email_app, smtp_server, httpserver):
    email_app(EMAIL_PROVIDERS="smtp,resend")
    smtp_server.set_mode(PERMANENT)
    resend_ok(httpserver)
    operation_id = queue("welcome")

    assert run(operation_id, Clock()).outcome == "dead"

    operation = load(operation_id)
    assert operation.attempts == 1 and operation.error_kind == "permanent"
    assert "rejected by smtp: DATA answered 550" in operation.error_message
    assert resend_calls(httpserver) == 0
    assert [(r.provider, r.status) for r in email_log(operation_id)] == [("smtp", "failed")]


def test_every_provider_saying_retry_after_defers_without_using_an_attempt(email_app, httpserver):
    email_app(EMAIL_PROVIDERS="resend,postmark")
    httpserver.expect_request("/resend/emails").respond_with_json(
        {"message": "slow"}, status=429, headers={"Retry-After": "40"}
    )
    httpserver.expect_request("/postmark/email").respond_with_json(
        {"Message": "slow"}, status=429, headers={"Retry-After": "20"}
    )
    clock = Clock()
    operation_id = queue("welcome")

    assert run(operation_id, clock).outcome == "deferred"

    operation = load(operation_id)
    assert operation.attempts == 0 and operation.state == "retrying"
    assert operation.next_attempt_at == clock.now + timedelta(seconds=20)
    assert [a.outcome for a in attempts_of(operation_id)] == ["deferred"]


# --- circuit breakers -------------------------------------------------------------------------


def test_circuit_opens_skips_half_opens_and_closes(email_app, httpserver):
    email_app(EMAIL_PROVIDERS="resend,postmark", EMAIL_CIRCUIT_THRESHOLD=2, EMAIL_CIRCUIT_COOLDOWN_SECONDS=60)
    httpserver.expect_request("/resend/emails").respond_with_json({"message": "down"}, status=503)
    httpserver.expect_request("/postmark/email").respond_with_json({"MessageID": "pm", "ErrorCode": 0})
    clock = Clock()

    for _ in range(2):  # two failures in a row: the second opens resend's circuit
        assert run(queue("welcome"), clock).outcome == "succeeded"
    state = {s["provider"]: s for s in circuits.circuit_states(clock.now)}
    assert state["resend"]["state"] == "open" and state["resend"]["consecutive_failures"] == 2
    assert state["resend"]["opened_until"] == clock.now + timedelta(seconds=60)
    assert state["postmark"]["state"] == "closed"

    skipped = queue("welcome")
    assert run(skipped, clock).outcome == "succeeded"
    assert resend_calls(httpserver) == 2  # not called while open
    assert [(r.provider, r.status, r.error) for r in email_log(skipped)] == [
        ("resend", "skipped", "circuit open"),
        ("postmark", "sent", None),
    ]

    clock.advance(61)
    assert {s["provider"]: s["state"] for s in circuits.circuit_states(clock.now)}["resend"] == "half_open"
    httpserver.clear_all_handlers()
    resend_ok(httpserver, "re_probe")
    probe = queue("welcome")
    assert run(probe, clock).outcome == "succeeded"

    assert [(r.provider, r.status) for r in email_log(probe)] == [("resend", "sent")]
    state = {s["provider"]: s for s in circuits.circuit_states(clock.now)}
    assert state["resend"]["state"] == "closed" and state["resend"]["consecutive_failures"] == 0


def test_half_open_allows_one_probe_and_a_failed_probe_reopens(email_app):
    app = email_app(EMAIL_PROVIDERS="resend", EMAIL_CIRCUIT_THRESHOLD=1, EMAIL_CIRCUIT_COOLDOWN_SECONDS=30)
    clock = Clock()
    circuits.record_failure("resend", clock.now, "HTTP 500", app.config)
    assert circuits.acquire("resend", clock.now, app.config) is False  # open
    clock.advance(31)

    assert circuits.acquire("resend", clock.now, app.config) is True  # this worker probes
    assert circuits.acquire("resend", clock.now, app.config) is False  # everyone else waits
    circuits.record_failure("resend", clock.now, "HTTP 500 again", app.config)

    [state] = [s for s in circuits.circuit_states(clock.now) if s["provider"] == "resend"]
    assert state["state"] == "open" and state["opened_until"] == clock.now + timedelta(seconds=30)
    assert state["last_error"] == "HTTP 500 again"
    assert app.config["EMAIL_CIRCUIT_THRESHOLD"] == 1


def test_every_circuit_open_defers_until_the_first_half_opens(email_app, httpserver):
    app = email_app(EMAIL_PROVIDERS="resend", EMAIL_CIRCUIT_THRESHOLD=1, EMAIL_CIRCUIT_COOLDOWN_SECONDS=60)
    clock = Clock()
    circuits.record_failure("resend", clock.now, "down", app.config)
    operation_id = queue("welcome")

    assert run(operation_id, clock).outcome == "deferred"

    operation = load(operation_id)
    assert operation.attempts == 0 and operation.next_attempt_at == clock.now + timedelta(seconds=60)
    assert "circuit is open" in operation.error_message
    assert resend_calls(httpserver) == 0


# --- rate limits ------------------------------------------------------------------------------


def test_thirty_emails_to_one_address_respect_the_limit_and_none_is_lost(email_app, smtp_server):
    email_app(EMAIL_RATE_PER_RECIPIENT_PER_MINUTE=10, EMAIL_RATE_GLOBAL_PER_MINUTE=100)
    clock = Clock()
    start = clock.now
    ids = [queue("welcome", to="busy@example.com") for _ in range(30)]

    drain(clock)

    assert all(load(i).state == "succeeded" for i in ids)
    assert len(smtp_server.received()) == 30
    assert len(set(smtp_server.offered)) == 30  # thirty distinct emails, each sent once
    sent_at = sorted(r.created_at for r in email_log() if r.status == "sent")
    assert len(sent_at) == 30
    # GCRA at 10/min: a burst of 10, then one every 6 s (the 11th no sooner than 6 s after the start).
    for n, moment in enumerate(sent_at):
        assert moment - start >= max(0, n - 9) * timedelta(seconds=6)
    assert sent_at[-1] - start >= timedelta(minutes=2)  # 30 at 10/min: 10 at once, then 20 six seconds apart
    assert sent_at[-1] - start < timedelta(minutes=2, seconds=5)  # ...and waits no longer than needed
    # Deferrals consumed nothing: every operation succeeded on its first real attempt.
    assert all(load(i).attempts == 1 for i in ids)
    outcomes = Counter(a.outcome for i in ids for a in attempts_of(i))
    assert outcomes["succeeded"] == 30 and outcomes["deferred"] >= 20 and set(outcomes) == {"succeeded", "deferred"}


def test_global_limit_defers_other_recipients_too(email_app, smtp_server):
    email_app(EMAIL_RATE_PER_RECIPIENT_PER_MINUTE=10, EMAIL_RATE_GLOBAL_PER_MINUTE=3)
    clock = Clock()
    ids = [queue("welcome", to=f"user{n}@example.com") for n in range(5)]

    outcomes = [run(i, clock).outcome for i in ids]

    assert outcomes == ["succeeded"] * 3 + ["deferred"] * 2
    assert load(ids[3]).next_attempt_at == clock.now + timedelta(seconds=20)  # 3/min: the next send in 20 s
    clock.advance(60)
    assert [run(i, clock).outcome for i in ids[3:]] == ["succeeded", "succeeded"]
    assert len(smtp_server.received()) == 5


def test_a_refused_global_send_gives_the_recipient_send_back(email_app):
    email_app()
    clock = Clock()
    ratelimit.reserve("other@example.com", now=clock.now, per_recipient=5, global_limit=1)

    with pytest.raises(Deferral, match="global"):
        ratelimit.reserve("me@example.com", now=clock.now, per_recipient=5, global_limit=1)

    assert ratelimit.sends_in_use("me@example.com", clock.now, 5) == 0
    assert ratelimit.sends_in_use(None, clock.now, 1) == 1


def test_concurrent_workers_never_exceed_the_limit(backend, email_app):
    app = email_app(backend)
    now = Clock().now
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker():
        with app.app_context():
            barrier.wait()
            for _ in range(3):
                try:
                    ratelimit.reserve("race@example.com", now=now, per_recipient=5, global_limit=100)
                    outcome = "ok"
                except Deferral:
                    outcome = "deferred"
                with lock:
                    results.append(outcome)
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 24
    assert results.count("ok") == 5
    assert ratelimit.sends_in_use("race@example.com", now, 5) == 5
    assert ratelimit.sends_in_use(None, now, 100) == 5


# --- purchase fulfilment ----------------------------------------------------------------------


def test_fulfilment_follows_the_confirmation_email(email_app, smtp_server):
    email_app(EMAIL_RETRY_LADDER="1s, 1s")
    clock = Clock()
    purchase_id = make_purchase()
    operation_id = queue(
        "lead_purchase_confirmation",
        purchase_id=purchase_id,
        context={"product_name": "Lead: Acme", "amount_cents": 4900, "currency": "usd"},
    )
    assert purchase_state(purchase_id) == ("pending", None)
    smtp_server.set_mode(TEMPORARY)

    assert run(operation_id, clock).outcome == "retrying"
    assert purchase_state(purchase_id) == ("failing", None)
    drain(clock)
    assert load(operation_id).state == "dead"
    assert purchase_state(purchase_id) == ("undeliverable", None)

    smtp_server.set_mode("accept")
    operations.retry_dead(operation_id, by="admin@example.com", now=clock.now)
    assert run(operation_id, clock).outcome == "succeeded"
    assert purchase_state(purchase_id) == ("sent", clock.now)
    [received] = smtp_server.received()
    assert f"#{purchase_id}" in received.message["Subject"]

    # A stray second confirmation that dies does not make a delivered purchase look undelivered.
    smtp_server.set_mode(PERMANENT)
    other = queue("lead_purchase_confirmation", purchase_id=purchase_id)
    assert run(other, clock).outcome == "dead"
    assert purchase_state(purchase_id) == ("sent", clock.now)


def test_other_emails_leave_fulfilment_alone(email_app, smtp_server):
    email_app()
    purchase_id = make_purchase()
    smtp_server.set_mode(PERMANENT)

    assert run(queue("refund_notification", purchase_id=purchase_id), Clock()).outcome == "dead"

    assert purchase_state(purchase_id) == ("pending", None)
