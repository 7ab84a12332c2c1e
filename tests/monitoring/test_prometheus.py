"""/metrics: Prometheus text parsed by prometheus_client's own parser, values equal to the database."""

from __future__ import annotations

import math
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.support.monitoring import T0, create, create_and_run, later, run_at
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, StripeEvent
from webapp.services.engine import pauses
from webapp.services.maintenance import cleanup
from webapp.services.payments import intake


def scrape(client, **headers) -> dict:
    """``{(sample name, frozenset(labels)): value}`` from one scrape."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, metric: str, **labels) -> float:
    return samples[(metric, frozenset(labels.items()))]


def db_count(*where, model=Operation) -> int:
    result = db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
    db.session.rollback()
    return result


def test_metrics_match_the_database(app):
    create_and_run("test.email_ok", "ok-1", T0)
    create_and_run("test.email_ok", "ok-2", T0)
    create_and_run("test.email_bounce", "bounce-1", T0)  # dead: also raises an alert operation
    flaky = create_and_run("test.flaky", "flaky-1", T0, fail_times=1)  # one failed attempt, retrying
    run_at(flaky, later(5))
    create("test.succeed", "waiting-1", utcnow() - timedelta(seconds=30))
    db.session.add(StripeEvent(id="evt_1", type="checkout.session.completed", payload="{}", received_at=T0))
    db.session.commit()
    intake.count_rejection("invalid_signature")
    intake.count_rejection("invalid_signature")
    pauses.pause("test.succeed", "ops")

    samples = scrape(app.test_client())

    for kind, name in db.session.execute(select(Operation.kind, Operation.name).distinct()).all():
        assert value(samples, "backstop_operations_created_total", kind=kind, name=name) == db_count(
            Operation.name == name
        )
        assert value(samples, "backstop_operations_succeeded_total", kind=kind, name=name) == db_count(
            Operation.name == name, Operation.state == "succeeded"
        )
    assert value(samples, "backstop_operations_failed_total", kind="job", name="test.flaky") == 1
    assert value(samples, "backstop_operations_dead_lettered_total", kind="email", name="test.email_bounce") == 1
    assert value(samples, "backstop_dead_letters_unresolved", kind="email") == 1
    assert value(samples, "backstop_operations", state="pending") == db_count(Operation.state == "pending")
    assert value(samples, "backstop_oldest_due_age_seconds") >= 30
    assert value(samples, "backstop_webhook_events_accepted_total", type="checkout.session.completed") == 1
    assert value(samples, "backstop_webhook_deliveries_rejected_total", reason="invalid_signature") == 2
    assert value(samples, "backstop_webhook_deliveries_rejected_total", reason="stale_timestamp") == 0
    assert value(samples, "backstop_operations_paused", name="test.succeed") == 1
    assert value(samples, "backstop_queue_up") == 1
    assert ("backstop_queue_depth", frozenset({("queue", "pending")})) in samples
    # The histogram: every finished attempt counted once, buckets cumulative.
    finished = db_count(OperationAttempt.duration_ms.is_not(None), model=OperationAttempt)
    counts = [
        value(samples, "backstop_operation_attempt_duration_seconds_count", kind=kind) for kind in ("email", "job")
    ]
    assert sum(counts) == finished
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "backstop_operation_attempt_duration_seconds_bucket" and ("kind", "email") in labels
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][1] == counts[0]


def test_counters_survive_cleanup_and_heartbeats_are_reported(sqlite_app):
    from webapp.services.engine import periodic

    for i in range(3):
        create_and_run("test.email_ok", f"ok-{i}", T0)
    periodic.run_exclusive("cleanup", lambda now: "ok", interval_seconds=3600, lease_seconds=60, clock=lambda: T0)
    before = scrape(sqlite_app.test_client())

    report = cleanup.cleanup(T0 + timedelta(days=31), sqlite_app.config)

    after = scrape(sqlite_app.test_client())
    assert report.succeeded == 3 and db_count(Operation.kind == "email") == 0
    for key in [k for k in before if k[0].endswith("_total") or "attempt_duration" in k[0]]:
        assert after[key] == before[key], key
    age = value(after, "backstop_periodic_job_heartbeat_age_seconds", job="cleanup")
    assert age > 86400  # it last ran at T0, months ago
    assert value(after, "backstop_periodic_job_stale", job="cleanup") == 1
    # A configured job that never ran is reported too (as by /healthz): no age, stale.
    assert math.isnan(value(after, "backstop_periodic_job_heartbeat_age_seconds", job="daily_report"))
    assert value(after, "backstop_periodic_job_stale", job="daily_report") == 1


def test_metrics_token_is_required_when_configured(sqlite_backend):
    from tests.conftest import make_app

    app = make_app(sqlite_backend, METRICS_TOKEN="scrape-me")
    with app.app_context():
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert scrape(client, Authorization="Bearer scrape-me")
        db.session.remove()
        db.engine.dispose()


def test_json_logs_one_object_per_attempt_without_secrets(sqlite_app):
    import io
    import json
    import logging

    from webapp.logs import JsonFormatter, RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("backstop")
    logger.addHandler(handler)
    try:
        operation_id = create_and_run("test.email_bounce", "bounce-json", T0, to="ann@example.com")
        logging.getLogger("backstop.test").warning(
            "calling provider with Authorization: Bearer sk_live_abcdef123456 and password=hunter2",
            extra={"authorization": "Bearer abc", "payload": {"card": "4242"}, "api_key": "k", "operation_id": 7},
        )
    finally:
        logger.removeHandler(handler)

    lines = stream.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    [attempt] = [e for e in entries if e["logger"] == "backstop.engine"]
    assert {k: attempt[k] for k in ("operation_id", "operation_name", "attempt", "outcome")} == {
        "operation_id": operation_id,
        "operation_name": "test.email_bounce",
        "attempt": 1,
        "outcome": "dead",
    }
    assert isinstance(attempt["duration_ms"], int)
    text = stream.getvalue()
    for secret in ("sk_live_abcdef123456", "hunter2", "Bearer abc", "4242", "ann@example.com"):
        assert secret not in text, secret
    [warning] = [e for e in entries if e["logger"] == "backstop.test"]
    assert warning["authorization"] == warning["payload"] == warning["api_key"] == "[redacted]"
    assert warning["operation_id"] == 7
