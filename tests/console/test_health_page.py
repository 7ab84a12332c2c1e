"""The operations-health page's numbers: grades, the banner, heartbeats as /healthz judges them, the trend."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from tests.support.console import PASSWORD, login, make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import OperationAttempt
from webapp.services.console import admins
from webapp.services.monitoring import hourly

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
    # Polls wait while the tab is hidden (static/js/admin.js; no eval'd trigger filter under the CSP).
    assert 'hx-trigger="every 10s, visibilitychange from:document"' in html
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


def test_pausing_from_the_console_needs_a_reason(client):
    from tests.support.console import post
    from webapp.services.engine import pauses

    refused = post(client, "/admin/pauses/test.succeed/pause", {"note": "  "})
    assert refused.status_code == 400 and "Give a reason for pausing test.succeed" in refused.text
    assert not pauses.is_paused("test.succeed")
    done = post(client, "/admin/pauses/test.succeed/pause", {"note": "provider incident"})
    assert done.status_code == 200 and "“provider incident”" in done.text and "by admin@example.com since" in done.text
    assert pauses.is_paused("test.succeed")


def test_the_page_says_how_fresh_its_roll_ups_are(client):
    make_op(state="succeeded", dead_ago=timedelta(days=2))
    page = client.get("/admin/partials/health/cards?window=7d").text
    assert "data-as-of" not in page  # nothing stored yet: counted live, nothing to qualify
    now = utcnow()
    for _ in range(8):  # what the checks job does over eight minutes: a day of hours per run
        hourly.refresh(now)
    cards = client.get("/admin/partials/health/cards?window=7d").text
    breakdown = client.get("/admin/partials/health/breakdown?window=7d").text
    stamp = f"as of {now:%Y-%m-%d %H:%M:%S} UTC"
    assert stamp in cards and stamp in breakdown
    assert "1 sent, 0 dead-lettered" in cards  # and the numbers still count the operation
