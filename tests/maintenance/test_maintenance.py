"""Maintenance jobs on an injected clock: auto-requeue, cleanup, stale heartbeats, daily report."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import DateTime, String, cast, func, insert, literal, select, true

from tests.support.monitoring import T0, alerts, create, create_and_run, insert_operations, later, operation_row, run_at
from webapp.domain.errors import PermanentError
from webapp.extensions import db
from webapp.models import AutoRequeue, EmailLog, EmailRateLimit, Operation, OperationAttempt, StripeEvent
from webapp.services.email import ratelimit
from webapp.services.engine import operations, periodic
from webapp.services.maintenance import cleanup, requeue
from webapp.services.monitoring import checks, liveness
from webapp.services.monitoring.rollups import duration_histogram, operation_counters, read_rollups
from webapp.services.payments.handlers import event_object

DAY = 86400


def count(model, *where) -> int:
    """Rows of ``model`` matching ``where``, read in a short transaction."""
    value = db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
    db.session.rollback()
    return value


def state_of(operation_id: int) -> str:
    operation = db.session.get(Operation, operation_id, populate_existing=True)
    state = operation.state
    db.session.rollback()
    return state


def test_auto_requeue_retries_transient_dead_letters_once_after_24_hours(sqlite_app):
    config = sqlite_app.config
    transient = create_and_run("test.email_flaky", "flaky-1", T0)
    permanent = create_and_run("test.email_bounce", "bounce-1", T0)
    resolved = create_and_run("test.email_flaky", "flaky-resolved", T0)
    operations.resolve(resolved, by="ops", note="customer asked us not to", now=later(10))
    assert {state_of(i) for i in (transient, permanent, resolved)} == {"dead"}

    assert requeue.auto_requeue(later(DAY - 1), config) == "requeued=0 skipped=0"
    assert requeue.auto_requeue(later(DAY), config) == "requeued=1 skipped=0"

    operation = db.session.get(Operation, transient)
    assert operation.state == "pending" and operation.resolution_note == "retried by auto-requeue"
    assert operation.max_attempts == 2
    db.session.rollback()
    assert count(AutoRequeue, AutoRequeue.operation_id == transient) == 1
    # It fails again: never auto-requeued a second time, however long it waits.
    assert run_at(transient, later(DAY + 1)).outcome == "dead"
    assert requeue.auto_requeue(later(5 * DAY), config) == "requeued=0 skipped=0"
    assert state_of(permanent) == "dead" and state_of(resolved) == "dead"


def test_auto_requeue_respects_the_attempt_cap(sqlite_app):
    insert_operations(
        [
            operation_row(1, name="test.email_flaky", state="dead", error_kind="transient", attempts=10),
            operation_row(2, name="test.email_flaky", state="dead", error_kind="transient", attempts=9),
        ]
    )

    assert requeue.auto_requeue(later(2 * DAY), sqlite_app.config) == "requeued=1 skipped=0"
    assert count(Operation, Operation.state == "dead", Operation.attempts == 10) == 1


def _stripe_event(event_id: str, at, state: str) -> None:
    db.session.add(
        StripeEvent(
            id=event_id,
            type="checkout.session.completed",
            payload=json.dumps({"id": event_id}),
            received_at=at,
            processing_state=state,
        )
    )
    db.session.commit()


def test_cleanup_honours_30_and_90_day_retention_and_keeps_metric_counters(sqlite_app):
    now = later(200 * DAY)
    old_ok = create_and_run("test.email_ok", "old-ok", now - timedelta(days=31))
    db.session.add(
        EmailLog(
            operation_id=old_ok,
            to_address="ann@example.com",
            template="welcome",
            status="sent",
            created_at=now - timedelta(days=31),
        )
    )
    db.session.commit()
    young_ok = create_and_run("test.email_ok", "young-ok", now - timedelta(days=29))
    old_resolved = create_and_run("test.email_bounce", "old-resolved", now - timedelta(days=95))
    operations.resolve(old_resolved, by="ops", now=now - timedelta(days=91))
    young_resolved = create_and_run("test.email_bounce", "young-resolved", now - timedelta(days=95))
    operations.resolve(young_resolved, by="ops", now=now - timedelta(days=89))
    unresolved = create_and_run("test.email_bounce", "unresolved", now - timedelta(days=150))
    _stripe_event("evt_old_done", now - timedelta(days=31), "processed")
    _stripe_event("evt_old_failed", now - timedelta(days=31), "failed")
    _stripe_event("evt_young", now - timedelta(days=29), "processed")
    counters_before, histogram_before = operation_counters(), duration_histogram()
    db.session.rollback()

    report = cleanup.cleanup(now, sqlite_app.config)

    remaining = set(db.session.execute(select(Operation.id).where(Operation.kind == "email")).scalars())
    assert remaining == {young_ok, young_resolved, unresolved}
    assert report.succeeded == 1
    assert report.resolved_dead == 1
    assert count(OperationAttempt, OperationAttempt.operation_id.in_([old_ok, old_resolved])) == 0
    assert count(EmailLog) == 0  # went with its operation (ON DELETE CASCADE)
    bodies = dict(db.session.execute(select(StripeEvent.id, StripeEvent.payload)).all())
    assert bodies == {
        "evt_old_done": "",
        "evt_old_failed": '{"id": "evt_old_failed"}',
        "evt_young": '{"id": "evt_young"}',
    }
    # A trimmed body is "" (the column is NOT NULL), and processing it again says why it is gone.
    with pytest.raises(PermanentError, match="cleared by retention"):
        event_object(db.session.get(StripeEvent, "evt_old_done"))
    db.session.rollback()
    # Counters are live rows plus roll-ups, so deleting rows never makes /metrics go backwards.
    rollups = read_rollups()
    for (metric, kind, name), value in counters_before.items():
        live = operation_counters().get((metric, kind, name), 0)
        assert live + rollups.get((metric, kind, name, ""), 0) == value, (metric, kind, name)
    for (kind, label), value in histogram_before.items():
        assert (
            duration_histogram().get((kind, label), 0) + rollups.get(("attempt_duration", kind, "", label), 0) == value
        )
    db.session.rollback()
    # A second run finds nothing more to do.
    again = cleanup.cleanup(now, sqlite_app.config)
    assert (again.succeeded, again.resolved_dead) == (0, 0)


def test_cleanup_forgets_email_rate_limits_of_recipients_idle_for_an_hour(sqlite_app):
    now = later(DAY)
    ratelimit.reserve("idle@example.com", now=now - timedelta(hours=2), per_recipient=10, global_limit=100)
    ratelimit.reserve("busy@example.com", now=now, per_recipient=10, global_limit=100)

    report = cleanup.cleanup(now, sqlite_app.config)

    assert report.rate_limits == 1 and "rate_limits=1" in str(report)
    scopes = set(db.session.execute(select(EmailRateLimit.scope)).scalars())
    assert scopes == {ratelimit.GLOBAL, ratelimit.recipient_scope("busy@example.com")}
    db.session.rollback()


def _webhook_event(i: int, event_id: str, received, state: str, op_state: str) -> int:
    insert_operations([operation_row(i, kind="webhook", name="test.webhook_broken", state=op_state, at=received)])
    operation_id = db.session.execute(select(func.max(Operation.id))).scalar_one()
    db.session.add(
        StripeEvent(
            id=event_id,
            type="checkout.session.completed",
            payload=json.dumps({"id": event_id}),
            received_at=received,
            processing_state=state,
            operation_id=operation_id,
        )
    )
    db.session.commit()
    return operation_id


def test_a_stripe_event_settled_after_the_walk_passed_it_loses_its_body_too(app):
    now = later(200 * DAY)
    _webhook_event(1, "evt_done", now - timedelta(days=40), "processed", "succeeded")
    late = _webhook_event(2, "evt_late", now - timedelta(days=40), "failed", "dead")
    young = _webhook_event(3, "evt_young", now - timedelta(days=10), "failed", "dead")

    cleanup.cleanup(now, app.config)
    assert bodies() == {"evt_done": "", "evt_late": '{"id": "evt_late"}', "evt_young": '{"id": "evt_young"}'}

    # A week later an admin replays both failed events and they are processed.
    replayed = now + timedelta(days=7)
    for operation_id, event_id in ((late, "evt_late"), (young, "evt_young")):
        db.session.execute(
            Operation.__table__.update()
            .where(Operation.id == operation_id)
            .values(state="succeeded", succeeded_at=replayed, dead_at=None)
        )
        db.session.execute(
            StripeEvent.__table__.update()
            .where(StripeEvent.id == event_id)
            .values(processing_state="processed", processed_at=replayed)
        )
    db.session.commit()
    cleanup.cleanup(replayed + timedelta(seconds=60), app.config)  # within a lease: not yet looked at
    assert bodies()["evt_late"] != ""

    cleanup.cleanup(replayed + timedelta(hours=1), app.config)

    # Past retention and settled: trimmed. The young one waits for its own 30 days.
    assert bodies() == {"evt_done": "", "evt_late": "", "evt_young": '{"id": "evt_young"}'}
    cleanup.cleanup(now + timedelta(days=21), app.config)
    assert bodies()["evt_young"] == ""


def bodies() -> dict:
    """Every stored Stripe event's body, by id."""
    result = dict(db.session.execute(select(StripeEvent.id, StripeEvent.payload)).all())
    db.session.rollback()
    return result


def test_stale_heartbeats_raise_job_stale_and_turn_healthz_red(sqlite_app):
    # Alerts and /healthz judge staleness from the same configured intervals.
    config = dict(
        sqlite_app.config,
        RECONCILE_INTERVAL_SECONDS=60,
        AUTO_REQUEUE_INTERVAL_SECONDS=60,
        CLEANUP_INTERVAL_SECONDS=60,
        CHECKS_INTERVAL_SECONDS=60,
    )
    periodic.run_exclusive("reconciler", lambda now: "ok", interval_seconds=60, lease_seconds=30, clock=lambda: T0)
    periodic.run_exclusive("daily_report", lambda now: "ok", interval_seconds=DAY, lease_seconds=30, clock=lambda: T0)
    for name in ("auto_requeue", "cleanup", "checks"):
        periodic.run_exclusive(name, lambda now: "ok", interval_seconds=60, lease_seconds=30, clock=lambda: T0)

    healthy, report = liveness.check(later(170), config)
    assert healthy, report
    checks.check_jobs(later(181), config)
    db.session.commit()
    stale = alerts("job_stale")
    assert {a.key for a in stale} == {"reconciler", "auto_requeue", "cleanup"}  # checks itself is running
    assert all(a.level == "critical" for a in stale)
    # A daily job is judged in days: two days late is fine, beyond three is stale.
    healthy, report = liveness.check(later(2 * DAY), config)
    assert report["jobs"]["daily_report"]["fresh"]
    assert "daily_report" not in report["stale_jobs"] and "reconciler" in report["stale_jobs"]
    assert not healthy and report["status"] == "unhealthy"
    checks.check_jobs(later(3 * DAY + 1), config)
    db.session.commit()
    assert "daily_report" in {a.key for a in alerts("job_stale")}
    # The reconciler beats again: one recovery alert, and /healthz reports it fresh.
    periodic.run_exclusive(
        "reconciler", lambda now: "ok", interval_seconds=60, lease_seconds=30, clock=lambda: later(3 * DAY + 2)
    )
    checks.check_jobs(later(3 * DAY + 3), config)
    db.session.commit()
    recovered = [a for a in alerts("job_stale") if a.state == "recovered"]
    assert [a.key for a in recovered] == ["reconciler"]
    assert liveness.check(later(3 * DAY + 3), config)[1]["jobs"]["reconciler"]["fresh"]


def test_a_job_that_never_ran_is_stale_for_alerts_as_for_healthz(sqlite_app):
    config = dict(sqlite_app.config, RECONCILE_INTERVAL_SECONDS=60)
    periodic.run_exclusive("reconciler", lambda now: "ok", interval_seconds=60, lease_seconds=30, clock=lambda: T0)

    checks.check_jobs(later(10), config)
    db.session.commit()

    healthy, report = liveness.check(later(10), config)
    never = {"auto_requeue", "cleanup", "daily_report"}  # no row in periodic_jobs at all
    assert not healthy and set(report["stale_jobs"]) == never | {"checks"}
    stale = alerts("job_stale")
    assert {a.key for a in stale} == never  # checks is the job running this check
    assert all(a.title.endswith("has never finished a run") and a.level == "critical" for a in stale)


def test_stale_after_intervals_is_one_setting_for_healthz_and_alerts(sqlite_app):
    config = dict(sqlite_app.config, RECONCILE_INTERVAL_SECONDS=60, JOB_STALE_AFTER_INTERVALS=10)
    periodic.run_exclusive("reconciler", lambda now: "ok", interval_seconds=60, lease_seconds=30, clock=lambda: T0)

    report = liveness.check(later(500), config)[1]
    checks.check_jobs(later(500), config)
    db.session.commit()

    assert report["reconciler"] == {"heartbeat_age_seconds": 500.0, "stale_after_seconds": 600.0, "fresh": True}
    assert report["jobs"]["reconciler"]["fresh"] and "reconciler" not in {a.key for a in alerts("job_stale")}
    checks.check_jobs(later(601), config)
    db.session.commit()
    assert "reconciler" in {a.key for a in alerts("job_stale")}
    assert not liveness.check(later(601), config)[1]["reconciler"]["fresh"]


def test_healthz_lists_every_periodic_job(sqlite_app):
    response = sqlite_app.test_client().get("/healthz")
    assert response.status_code == 503  # nothing has run yet
    assert set(response.json["jobs"]) == {"reconciler", "auto_requeue", "cleanup", "daily_report", "checks"}
    assert liveness.check(later(0), sqlite_app.config)[1]["jobs"]["daily_report"]["stale_after_seconds"] == 3 * DAY


def test_daily_report_counts_rates_and_top_failures_once_a_day(sqlite_app):
    now = later(DAY)
    for i in range(3):
        create_and_run("test.email_ok", f"ok-{i}", later(100 + i))
    for i in range(2):
        create_and_run("test.email_bounce", f"bounce-{i}", later(200 + i), to=f"user{i}@example.com")

    alert = checks.send_daily_report(now, sqlite_app.config)

    report = alert.context["report"]
    assert report["kinds"]["email"] == {"created": 5, "succeeded": 3, "dead": 2, "rate": 60.0}
    assert report["unresolved_dead_letters"] == 2
    [top] = report["top_failures"]  # both bounces share one fingerprint (the address is normalised)
    assert top["count"] == 2 and top["name"] == "test.email_bounce" and "<email>" in top["sample"]
    assert alert.level == "warning" and alert.key == now.date().isoformat()
    assert checks.send_daily_report(now + timedelta(hours=1), sqlite_app.config) is None


def insert_many_old_operations(number: int, *, at) -> None:
    """``number`` succeeded operations ``old-0``, ``old-1``, ... created ``at``, each with one attempt.

    The database copies one ORM-made row (building the rows in Python would take seconds): the
    copies have exactly its column values, only their idempotency keys differ."""
    insert_operations([operation_row(0, at=at, idempotency_key="old-0")])
    operations_table = Operation.__table__
    n = select(literal(1).label("i")).cte("n", recursive=True)
    n = n.union_all(select(n.c.i + 1).where(n.c.i < number - 1))
    copied = [column for column in operations_table.columns if column.name not in ("id", "idempotency_key")]
    copies = (
        select(*copied, literal("old-") + cast(n.c.i, String))
        .select_from(n.join(operations_table, true()))
        .where(operations_table.c.idempotency_key == "old-0")
    )
    db.session.execute(insert(Operation).from_select([*(c.name for c in copied), "idempotency_key"], copies))
    first = db.session.execute(select(func.min(Operation.id))).scalar_one()
    attempts = (
        select(
            operations_table.c.id,
            literal(1),
            literal(at, DateTime()),
            literal(at, DateTime()),
            (operations_table.c.id - first) % 700,
            literal("succeeded"),
        )
        .where(operations_table.c.idempotency_key.like("old-%"))
        .order_by(operations_table.c.id)
    )
    columns = ["operation_id", "number", "started_at", "finished_at", "duration_ms", "outcome"]
    db.session.execute(insert(OperationAttempt).from_select(columns, attempts))
    db.session.commit()


@pytest.mark.alone  # times every batch
def test_cleanup_of_200k_rows_in_short_batches_while_writes_continue(sqlite_backend):
    from tests.conftest import make_app

    app = make_app(sqlite_backend, CLEANUP_BATCH_PAUSE_SECONDS=0.005)  # default batch size
    with app.app_context():
        old = T0 - timedelta(days=40)
        insert_many_old_operations(100_000, at=old)
        assert count(Operation) + count(OperationAttempt) == 200_000

        writes, errors, done = [], [], threading.Event()

        def writer():
            with app.app_context():
                i = 0
                while not done.is_set():
                    started = time.perf_counter()
                    try:
                        create("test.email_ok", f"live-{i}", T0)
                    except Exception as exc:  # any failure is a finding
                        errors.append(repr(exc))
                        db.session.rollback()
                    writes.append(time.perf_counter() - started)
                    i += 1
                db.session.remove()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            report = cleanup.cleanup(T0, app.config)
        finally:
            done.set()
            thread.join(30)

        assert report.succeeded == 100_000 and report.complete
        assert count(OperationAttempt) == 0
        timings = sorted(report.batch_ms)
        print(f"batches={len(timings)} median={timings[len(timings) // 2]:.1f} ms max={timings[-1]:.1f} ms")
        assert report.max_batch_ms < 200, f"longest batch {report.max_batch_ms:.0f} ms; top: {timings[-5:]}"
        assert len(report.batch_ms) >= 500
        assert errors == []
        assert len(writes) >= 100 and count(Operation, Operation.idempotency_key.like("live-%")) == len(writes)
        assert max(writes) < 2.0, f"a write waited {max(writes):.2f} s"
        db.session.remove()
        db.engine.dispose()
