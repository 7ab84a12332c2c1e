"""Alert channels: email to the admins through the providers, a signed JSON webhook, PagerDuty events, no loops."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC

import pytest
from sqlalchemy import select
from werkzeug.wrappers import Response

from tests.conftest import inside, make_app
from tests.support.email import email_log
from tests.support.monitoring import (
    T0,
    alerts,
    create_and_run,
    deliver_all,
    insert_operations,
    later,
    operation_row,
    run_at,
    run_checks_fresh,
)
from tests.support.reads import detached
from tests.support.smtp import PERMANENT
from webapp.config import ConfigurationError, load
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.monitoring import channels

HOOK_PATH = "/hooks/backstop"
SECRET = "whsec-shared-not-in-any-payload"
ROUTING_KEY = "R0UT1NGKEY-not-in-any-log"


def _operations(kind: str | None = None) -> list[Operation]:
    query = select(Operation).order_by(Operation.id)
    if kind:
        query = query.where(Operation.kind == kind)
    return detached(lambda: db.session.execute(query).scalars().all())


def _hook_requests(server) -> list:
    return [request for request, _ in server.log if request.path == HOOK_PATH]


def _dead_letters(count: int, start: int = 0) -> None:
    insert_operations(
        [
            operation_row(start + i, kind="job", name="test.job", state="dead", error_kind="permanent")
            for i in range(count)
        ]
    )


def test_email_channel_sends_to_every_admin_through_the_providers_with_failover(
    sqlite_backend, smtp_server, httpserver
):
    # Postmark first and down (503), SMTP second: the alert email fails over like any email.
    httpserver.expect_request("/postmark/email", method="POST").respond_with_json({"Message": "down"}, status=503)
    app = make_app(
        sqlite_backend,
        ALERT_EMAIL_TO="ops@example.com, On-Call@Example.com",
        EMAIL_PROVIDERS="postmark,smtp",
        POSTMARK_SERVER_TOKEN="pm_token",
        POSTMARK_API_BASE=httpserver.url_for("/postmark"),
        SMTP_URL=smtp_server.url,
        EMAIL_FROM="Backstop <alerts@shop.example>",
        PUBLIC_BASE_URL="https://backstop.example.com",
    )
    with inside(app):
        operation_id = create_and_run("test.email_bounce", "bounce-1", subject="purchase:42", to="ann@example.com")
        [alert] = alerts()
        deliveries = _operations("alert")
        assert sorted(op.name for op in deliveries) == ["alert.email", "alert.email", "alert.slack"]
        emails = [op for op in deliveries if op.name == "alert.email"]
        assert sorted(op.payload["to"] for op in emails) == ["on-call@example.com", "ops@example.com"]

        assert [result.outcome for result in deliver_all(later(1))] == ["succeeded"] * 3

        received = smtp_server.received()
        assert sorted(r.rcpt_tos for r in received) == [("on-call@example.com",), ("ops@example.com",)]
        message = received[0].message
        assert message["Subject"] == f"[Backstop ERROR] {alert.title}"
        text = message.get_body(("plain",)).get_content()
        assert "550 mailbox unavailable" in text and f"Operation id: {operation_id}" in text
        assert "https://backstop.example.com/admin/failed-operations?" in text
        # Each send is in the email log: Postmark failed, SMTP sent.
        for email in emails:
            assert [(row.provider, row.status, row.template) for row in email_log(email.id)] == [
                ("postmark", "failed", "alert"),
                ("smtp", "sent", "alert"),
            ]
        # No email operation was created for them: nothing whose death could alert again.
        assert [op.name for op in _operations("email")] == ["test.email_bounce"]


def test_webhook_is_signed_so_a_receiver_can_verify_it_and_payloads_hold_no_secret(sqlite_backend, httpserver):
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    url = httpserver.url_for(HOOK_PATH)
    app = make_app(sqlite_backend, ALERT_WEBHOOK_URL=url, ALERT_WEBHOOK_SECRET=SECRET)
    with inside(app):
        create_and_run("test.webhook_broken", "wh-1")
        [alert] = alerts()
        [delivery] = [op for op in _operations("alert") if op.name == "alert.webhook"]
        deliver_all(later(1))

        [request] = _hook_requests(httpserver)
        raw = request.get_data()
        # Verify as the README tells a receiver to: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>.
        parts = dict(item.split("=", 1) for item in request.headers["X-Backstop-Signature"].split(","))
        expected = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected)
        assert int(parts["t"]) == int(later(1).replace(tzinfo=UTC).timestamp())  # the attempt's time
        assert request.headers["X-Backstop-Delivery"] == str(delivery.id)
        body = json.loads(raw)
        assert (body["type"], body["level"], body["alert_id"], body["title"]) == (
            "webhook_failure",
            "critical",
            alert.id,
            alert.title,
        )
        assert body["dedup_key"] == f"backstop:webhook_failure:{alert.key}"
        # A tampered body fails verification.
        forged = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + raw + b" ", hashlib.sha256).hexdigest()
        assert forged != parts["v1"]
        # Neither the secret nor the URL is stored in any operation.
        stored = json.dumps([op.payload for op in _operations()])
        assert SECRET not in stored and url not in stored and HOOK_PATH not in stored


def test_pagerduty_mode_triggers_and_resolves_one_incident_and_skips_news(sqlite_backend, httpserver):
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_json({"status": "success"}, status=202)
    app = make_app(
        sqlite_backend,
        ALERT_WEBHOOK_URL=httpserver.url_for(HOOK_PATH),
        ALERT_WEBHOOK_FORMAT="pagerduty",
        ALERT_WEBHOOK_ROUTING_KEY=ROUTING_KEY,
        PUBLIC_BASE_URL="https://backstop.example.com",
    )
    with inside(app):
        _dead_letters(11)
        run_checks_fresh(T0, app.config)  # dlq_threshold warning
        db.session.execute(Operation.__table__.update().values(resolved_at=later(5), resolved_by="ops"))
        db.session.commit()
        run_checks_fresh(later(60), app.config)  # recovered
        from webapp.services.monitoring import checks

        checks.send_daily_report(later(86400), app.config)  # info news: not an incident
        deliver_all(later(86401))

        events = [json.loads(request.get_data()) for request in _hook_requests(httpserver)]
        assert [event["event_action"] for event in events] == ["trigger", "resolve"]
        trigger, resolve = events
        assert trigger["routing_key"] == ROUTING_KEY == resolve["routing_key"]
        assert trigger["dedup_key"] == resolve["dedup_key"] == "backstop:dlq_threshold:unresolved"
        payload = trigger["payload"]
        assert (payload["severity"], payload["source"]) == ("warning", "backstop.example.com")
        assert payload["summary"] == "11 unresolved dead letters"
        assert payload["timestamp"] == "2026-03-01T12:00:00Z"
        assert trigger["links"][0]["href"].startswith("https://backstop.example.com/admin/failed-operations")
        assert "payload" not in resolve
        assert ROUTING_KEY not in json.dumps([op.payload for op in _operations()])


def test_the_health_page_names_the_channels_and_nothing_secret():
    config = load(
        env={
            "BACKSTOP_ENV": "test",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/secret",
            "ALERT_EMAIL_TO": "a@example.com,b@example.com",
            "ALERT_WEBHOOK_URL": "https://events.pagerduty.com/v2/enqueue",
            "ALERT_WEBHOOK_FORMAT": "pagerduty",
            "ALERT_WEBHOOK_ROUTING_KEY": ROUTING_KEY,
            "ALERT_WEBHOOK_SECRET": SECRET,
        }
    )
    assert channels.describe(config) == ["Slack", "email to 2 admins", "PagerDuty webhook, signed"]


def test_pagerduty_mode_needs_a_routing_key():
    with pytest.raises(ConfigurationError, match="ALERT_WEBHOOK_ROUTING_KEY"):
        load(
            env={"BACKSTOP_ENV": "test", "ALERT_WEBHOOK_URL": "https://x.example", "ALERT_WEBHOOK_FORMAT": "pagerduty"}
        )


def test_failing_channels_dead_letter_and_never_alert_about_themselves(sqlite_backend, smtp_server, httpserver):
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_response(Response("down", status=503))
    smtp_server.set_mode(PERMANENT)  # every alert email is refused: the email channel is broken too
    app = make_app(
        sqlite_backend,
        ALERT_EMAIL_TO="ops@example.com",
        SMTP_URL=smtp_server.url,
        ALERT_WEBHOOK_URL=httpserver.url_for(HOOK_PATH),
        ALERT_WEBHOOK_SECRET=SECRET,
    )
    with inside(app):
        create_and_run("test.email_bounce", "bounce-1")
        [alert] = alerts()
        deliveries = {op.name: op.id for op in _operations("alert")}
        hook, mail = deliveries["alert.webhook"], deliveries["alert.email"]

        assert [run_at(hook, when).outcome for when in (later(1), later(12), later(80))] == [
            "retrying",
            "retrying",
            "dead",
        ]
        assert run_at(mail, later(1)).outcome == "dead"  # a 5xx SMTP answer is permanent
        for minute in range(1, 4):
            run_checks_fresh(later(90 + 60 * minute), app.config)
        deliver_all(later(400))

        # Still the one alert, and no new delivery: dead deliveries raised nothing (no email_failure,
        # no dlq_threshold, no attempts alert), so nothing was sent again through the broken channels.
        assert [a.id for a in alerts()] == [alert.id]
        assert len(_operations("alert")) == 3
        assert [op.name for op in _operations("email")] == ["test.email_bounce"]
        dead = {op.name: op for op in _operations("alert") if op.state == "dead"}
        assert set(dead) == {"alert.webhook", "alert.email"}
        assert "503" in dead["alert.webhook"].error_message
        assert (
            HOOK_PATH not in dead["alert.webhook"].error_message and SECRET not in dead["alert.webhook"].error_message
        )
        assert len(_hook_requests(httpserver)) == 3
