"""Alerts: recorded, posted to a real local Slack endpoint, deduplicated, fired on crossings and recoveries."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from tests.conftest import inside, make_app
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
from tests.support.reads import load
from webapp.extensions import db
from webapp.models import Alert, Operation
from webapp.services.monitoring import alerts as alert_service
from webapp.services.monitoring import checks

SLACK_PATH = "/services/T000/B000/not-a-real-secret"


@pytest.fixture
def slack(httpserver):
    """A real HTTP server standing in for Slack's incoming webhook; answers 'ok'."""
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    return httpserver


@pytest.fixture
def slack_app(sqlite_backend, slack):
    """App on SQLite whose SLACK_WEBHOOK_URL points at the local server."""
    app = make_app(
        sqlite_backend, SLACK_WEBHOOK_URL=slack.url_for(SLACK_PATH), PUBLIC_BASE_URL="https://backstop.example.com"
    )
    with inside(app):
        yield app


def posts(server) -> list[dict]:
    """The JSON bodies Slack received, in order."""
    return [json.loads(request.get_data()) for request, _ in server.log if request.path == SLACK_PATH]


def test_dead_email_is_alerted_with_context_and_posted_to_slack(slack_app, slack):
    operation_id = create_and_run("test.email_bounce", "bounce-1", subject="purchase:42", to="ann@example.com")

    [alert] = alerts()
    assert (alert.type, alert.level, alert.state) == ("email_failure", "error", None)
    assert alert.context["operation_id"] == operation_id
    assert alert.context["operation_name"] == "test.email_bounce"
    assert alert.context["subject"] == "purchase:42"
    assert alert.context["attempts"] == 1
    assert "550 mailbox unavailable" in alert.context["error"]
    assert alert.context["admin_url"].startswith("https://backstop.example.com/admin/failed-operations?")
    assert "name=test.email_bounce" in alert.context["admin_url"]
    assert alert.context["details_url"] == f"https://backstop.example.com/api/admin/operations/{operation_id}"
    # The alert and its delivery operation were committed with the dead-letter itself.
    delivery = db.session.get(Operation, alert.operation_id)
    assert (delivery.kind, delivery.name, delivery.state) == ("alert", "alert.slack", "pending")
    db.session.rollback()

    [result] = deliver_all(later(1))

    assert result.outcome == "succeeded"
    [body] = posts(slack)
    assert body["text"].startswith(":red_circle: ERROR: Email test.email_bounce failed")
    attachment = body["attachments"][0]
    assert attachment["color"] == "#eb5757"
    rendered = json.dumps(attachment["blocks"])
    assert f"*Operation*\\n{operation_id}" in rendered and "purchase:42" in rendered
    assert "<https://backstop.example.com/admin/failed-operations?" in rendered
    assert f"<https://backstop.example.com/api/admin/operations/{operation_id}|Operation details (API)>" in rendered
    assert "*Details url*" not in rendered  # links are links, not fields
    assert alerts()[0].delivered_at == later(1)
    assert load(alert.operation_id).result == {"alert_id": alert.id, "delivered": True, "channel": "slack"}


def test_webhook_failure_is_critical_and_levels_have_their_own_emoji_and_colour(slack_app, slack):
    create_and_run("test.webhook_broken", "wh-1")
    for level in ("info", "warning"):
        alert_service.raise_alert(
            "system_health", level, f"probe-{level}", f"{level} probe", "External <b>&</b> text", now=T0
        )
    db.session.commit()

    deliver_all(later(1))

    bodies = posts(slack)
    assert [body["text"].split(":")[1] for body in bodies] == [
        "rotating_light",
        "large_blue_circle",
        "large_yellow_circle",
    ]
    assert bodies[0]["text"].startswith(":rotating_light: CRITICAL: Webhook processing test.webhook_broken")
    assert len({body["attachments"][0]["color"] for body in bodies}) == 3
    # External text is escaped, so it cannot become a Slack link or mention.
    assert "External &lt;b&gt;&amp;&lt;/b&gt; text" in json.dumps(bodies[1])


def test_same_failure_alerts_once_per_window(slack_app, slack):
    create_and_run("test.email_bounce", "a", T0)
    create_and_run("test.email_bounce", "b", later(60))  # same name and error: inside the window
    create_and_run("test.webhook_broken", "c", later(120))  # another key: alerts
    create_and_run("test.email_bounce", "d", later(901))  # window (900 s) over: alerts again

    assert [(a.type, a.context["operation_name"]) for a in alerts()] == [
        ("email_failure", "test.email_bounce"),
        ("webhook_failure", "test.webhook_broken"),
        ("email_failure", "test.email_bounce"),
    ]
    deliver_all(later(1000))
    assert len(posts(slack)) == 3


def _dead_letters(count: int, start: int = 0) -> None:
    insert_operations(
        [
            operation_row(start + i, kind="job", name="test.job", state="dead", error_kind="permanent")
            for i in range(count)
        ]
    )


def test_dlq_threshold_fires_on_crossing_escalates_and_recovers_once(slack_app, slack):
    _dead_letters(10)
    assert run_checks_fresh(T0, slack_app.config) == "alerts=0"  # 10 is not above 10
    _dead_letters(1, start=10)
    run_checks_fresh(later(60), slack_app.config)
    run_checks_fresh(later(120), slack_app.config)  # still 11: no news
    _dead_letters(40, start=11)
    run_checks_fresh(later(180), slack_app.config)  # 51: critical, inside the window
    run_checks_fresh(later(240), slack_app.config)
    db.session.execute(Operation.__table__.update().values(resolved_at=later(250), resolved_by="ops"))
    db.session.commit()
    run_checks_fresh(later(300), slack_app.config)  # recovered
    run_checks_fresh(later(360), slack_app.config)

    fired = alerts("dlq_threshold")
    assert [(a.level, a.state) for a in fired] == [("warning", "firing"), ("critical", "firing"), ("info", "recovered")]
    assert fired[0].title == "11 unresolved dead letters" and fired[1].title == "51 unresolved dead letters"
    assert fired[2].title.startswith("Recovered:")
    deliver_all(later(400))
    texts = [body["text"] for body in posts(slack)]
    assert texts[0].startswith(":large_yellow_circle: WARNING") and texts[1].startswith(":rotating_light: CRITICAL")
    assert texts[2].startswith(":large_blue_circle: INFO: Recovered")


def test_failure_rate_needs_a_sample_and_uses_the_last_hour(slack_app):
    config = slack_app.config
    now = later(3600)
    # Two of four emails dead: a terrible rate, but too small a sample to mean anything.
    insert_operations(
        [operation_row(i, at=later(3000)) for i in range(2)]
        + [operation_row(i, state="dead", at=later(3000)) for i in range(2)]
    )
    run_checks_fresh(now, config)
    assert alerts("failure_rate") == []
    # 18 sent and 2 dead in the hour (90%): below 95% (warning) but not below 90% (critical).
    insert_operations([operation_row(100 + i, at=later(3500)) for i in range(16)])
    # Failures before the window do not count.
    insert_operations([operation_row(200 + i, state="dead", at=T0 - timedelta(seconds=1)) for i in range(30)])

    run_checks_fresh(now, config)

    [alert] = alerts("failure_rate")
    assert (alert.key, alert.level, alert.state) == ("email", "warning", "firing")
    assert alert.context["value"] == "90.0%" and alert.context["sample"] == "18 ok, 2 dead"


def test_slack_down_alert_retries_then_dead_letters_without_raising_more_alerts(sqlite_backend, httpserver):
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_response(Response("no_service", status=503))
    app = make_app(sqlite_backend, SLACK_WEBHOOK_URL=httpserver.url_for(SLACK_PATH))
    with app.app_context():
        create_and_run("test.email_bounce", "bounce-1")
        [alert] = alerts()

        outcomes = [run_at(alert.operation_id, when).outcome for when in (later(1), later(12), later(80))]
        run_checks_fresh(later(90), app.config)

        assert outcomes == ["retrying", "retrying", "dead"]  # alert.slack: 2 retries
        assert len([r for r, _ in httpserver.log if r.path == SLACK_PATH]) == 3
        delivery = db.session.get(Operation, alert.operation_id)
        assert delivery.state == "dead" and "503" in delivery.error_message
        assert SLACK_PATH not in delivery.error_message  # the webhook URL is a secret
        db.session.rollback()
        # Still exactly one alert and one alert operation: a dying alert raises nothing.
        assert len(alerts()) == 1
        assert (
            db.session.execute(
                select(func.count()).select_from(Operation).where(Operation.kind == "alert")
            ).scalar_one()
            == 1
        )
        db.session.rollback()
        db.session.remove()
        db.engine.dispose()


def test_slack_unreachable_is_transient_and_hides_the_url(sqlite_backend):
    app = make_app(sqlite_backend, SLACK_WEBHOOK_URL="http://127.0.0.1:9/services/T/B/secret-part")
    with app.app_context():
        create_and_run("test.email_bounce", "bounce-1")
        [alert] = alerts()
        assert run_at(alert.operation_id, later(1)).outcome == "retrying"
        delivery = db.session.get(Operation, alert.operation_id)
        assert delivery.error_kind == "transient" and "secret-part" not in delivery.error_message
        db.session.rollback()
        db.session.remove()
        db.engine.dispose()


def test_without_slack_alerts_are_recorded_and_listed(sqlite_app):
    create_and_run("test.email_bounce", "bounce-1", T0)
    create_and_run("test.webhook_broken", "wh-1", later(5))

    results = deliver_all(later(10))

    assert [r.outcome for r in results] == ["succeeded", "succeeded"]
    recent = alert_service.recent_alerts(10)
    assert [a.type for a in recent] == ["webhook_failure", "email_failure"]  # newest first
    assert recent[0].delivered_at is None  # recorded only: nowhere to deliver
    assert load(recent[0].operation_id).result["delivered"] is False
    assert db.session.execute(select(func.count()).select_from(Alert)).scalar_one() == 2
    db.session.rollback()


def test_dead_alert_deliveries_never_raise_a_dlq_threshold_alert(slack_app):
    insert_operations(
        [operation_row(i, kind="alert", name="alert.slack", state="dead", error_kind="transient") for i in range(60)]
    )
    _dead_letters(10)

    run_checks_fresh(T0, slack_app.config)

    assert alerts("dlq_threshold") == []  # 70 dead, but only 10 that are not alerts
    _dead_letters(1, start=10)
    run_checks_fresh(later(60), slack_app.config)
    [alert] = alerts("dlq_threshold")
    assert (alert.level, alert.title) == ("warning", "11 unresolved dead letters")


def test_webhook_failure_rate_uses_its_own_thresholds_and_recovers(slack_app, slack):
    config = slack_app.config
    now = later(3600)
    hook = dict(kind="webhook", name="test.webhook_broken")
    # 98 ok, 2 dead = 98%: fine for email (95%), a warning for webhooks (99%).
    insert_operations(
        [operation_row(i, at=later(3000), **hook) for i in range(98)]
        + [operation_row(i, state="dead", at=later(3000), **hook) for i in range(2)]
    )
    run_checks_fresh(now, config)
    insert_operations([operation_row(100 + i, state="dead", at=later(3100), **hook) for i in range(4)])
    run_checks_fresh(later(3660), config)  # 98 / 104 = 94.2%: below 95%, critical
    run_checks_fresh(later(3600 + 3600), config)  # the bad hour is over: nothing finished, recovered

    fired = alerts("failure_rate")
    assert [(a.key, a.level, a.state, a.context["value"]) for a in fired] == [
        ("webhook", "warning", "firing", "98.0%"),
        ("webhook", "critical", "firing", "94.2%"),
        ("webhook", "info", "recovered", "100.0%"),
    ]
    deliver_all(later(7300))
    assert [body["text"].split(":")[1] for body in posts(slack)] == [
        "large_yellow_circle",
        "rotating_light",
        "large_blue_circle",
    ]


def test_system_health_fires_when_the_queue_is_unreachable_and_recovers(sqlite_backend, slack):
    broken = make_app(sqlite_backend, HUEY_URL="redis://127.0.0.1:1/0", SLACK_WEBHOOK_URL=slack.url_for(SLACK_PATH))
    with broken.app_context():
        run_checks_fresh(T0, broken.config)
        run_checks_fresh(later(60), broken.config)  # still down: no news
        db.session.remove()
        db.engine.dispose()
    healthy = make_app(sqlite_backend, SLACK_WEBHOOK_URL=slack.url_for(SLACK_PATH))
    with healthy.app_context():
        run_checks_fresh(later(120), healthy.config)

        fired = alerts("system_health")
        queue = [a for a in fired if a.key == "queue"]
        assert [(a.level, a.state) for a in queue] == [("critical", "firing"), ("info", "recovered")]
        assert queue[0].title == "The queue is unreachable" and queue[0].context["error"] == "ConnectionError"
        deliver_all(later(130))
        assert posts(slack)[0]["text"].startswith(":rotating_light: CRITICAL: The queue is unreachable")
        db.session.remove()
        db.engine.dispose()


def test_system_health_fires_when_a_periodic_job_fails(slack_app):
    from webapp.services.engine import periodic

    def broken(now):
        raise RuntimeError("cleanup could not reach the database")

    periodic.run_exclusive("cleanup", broken, interval_seconds=3600, lease_seconds=60, clock=lambda: T0)
    checks.run_checks(later(5), slack_app.config)

    [alert] = [a for a in alerts("system_health") if a.key == "job_failed:cleanup"]
    assert alert.level == "error" and "RuntimeError: cleanup could not reach the database" in alert.context["error"]
    periodic.run_exclusive(
        "cleanup", lambda now: "ok", interval_seconds=3600, lease_seconds=60, clock=lambda: later(3600)
    )
    checks.run_checks(later(3605), slack_app.config)
    assert [a.state for a in alerts("system_health") if a.key == "job_failed:cleanup"] == ["firing", "recovered"]


def test_daily_report_is_recorded_and_posted_to_slack(slack_app, slack):
    create_and_run("test.email_ok", "ok-1", T0)
    create_and_run("test.email_bounce", "bounce-1", later(10))

    report = checks.send_daily_report(later(86400), slack_app.config)
    deliver_all(later(86401))

    [body] = [b for b in posts(slack) if "Daily health report" in b["text"]]
    assert body["text"].startswith(":large_yellow_circle: WARNING: Daily health report")  # email rate 50%
    rendered = json.dumps(body, ensure_ascii=False)
    assert "email: 1 ok, 1 dead (50.0%)" in rendered and "Top failure #1: 1× test.email_bounce" in rendered
    assert alerts("daily_report")[0].id == report.id
