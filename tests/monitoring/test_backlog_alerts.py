"""Backlog alerts: due operations waiting, the oldest due one's age and average attempts (seed 003)."""

from __future__ import annotations

from tests.support.monitoring import T0, alerts, insert_operations, later, operation_row, run_checks_fresh
from webapp.config import load
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.monitoring import health_page


def _waiting(count: int, start: int, at) -> None:
    insert_operations(
        [operation_row(start + i, name="test.job", kind="job", state="pending", at=at) for i in range(count)]
    )


def _fired(type_: str, key: str) -> list[tuple]:
    return [(a.level, a.state) for a in alerts(type_) if a.key == key]


def test_defaults_alert_as_seed_003_asks_and_the_cards_share_them():
    config = load(env={"BACKSTOP_ENV": "test"})
    assert (config["ALERT_QUEUE_DEPTH_WARNING"], config["ALERT_AVG_ATTEMPTS_WARNING"]) == (100, 2.0)
    assert config["HEALTH_THRESHOLDS"]["queue_depth"] == ("max", 100.0, 1000.0)
    assert config["HEALTH_THRESHOLDS"]["avg_attempts"] == ("max", 2.0, 3.0)
    one_knob = load(env={"BACKSTOP_ENV": "test", "ALERT_QUEUE_DEPTH_WARNING": "50"})
    assert one_knob["HEALTH_THRESHOLDS"]["queue_depth"] == ("max", 50.0, 1000.0)


def test_queue_depth_warns_escalates_stays_quiet_and_recovers(sqlite_app):
    config = sqlite_app.config
    _waiting(100, 0, later(0))
    run_checks_fresh(later(10), config)  # 100 is not above 100
    assert _fired("backlog", "queue_depth") == []
    _waiting(1, 100, later(10))
    run_checks_fresh(later(20), config)  # 101: warning
    _waiting(900, 101, later(20))
    run_checks_fresh(later(30), config)  # 1001: critical
    run_checks_fresh(later(40), config)  # still critical: no news
    db.session.execute(Operation.__table__.update().values(state="succeeded", succeeded_at=later(45)))
    db.session.commit()
    run_checks_fresh(later(50), config)  # drained: one recovery
    run_checks_fresh(later(60), config)

    assert _fired("backlog", "queue_depth") == [("warning", "firing"), ("critical", "firing"), ("info", "recovered")]
    warning, critical, _ = [a for a in alerts("backlog") if a.key == "queue_depth"]
    assert warning.title == "101 operations due and waiting"
    assert critical.title == "more than 1000 operations due and waiting"
    assert "status=due" in warning.context["admin_url"]


def test_oldest_due_age_warns_then_goes_critical_then_recovers(sqlite_app):
    config = sqlite_app.config
    _waiting(1, 0, T0)
    for seconds in (300, 301, 600, 901, 960):
        run_checks_fresh(later(seconds), config)
    db.session.execute(Operation.__table__.update().values(state="running"))
    db.session.commit()
    run_checks_fresh(later(1000), config)

    assert _fired("backlog", "oldest_due_age") == [
        ("warning", "firing"),
        ("critical", "firing"),
        ("info", "recovered"),
    ]
    assert alerts("backlog")[0].title == "The oldest due operation has waited 5 min"


def test_average_attempts_needs_a_sample_ignores_alert_deliveries_and_recovers(sqlite_app):
    config = sqlite_app.config
    now = later(3600)
    # 19 operations that needed 4 attempts each: too small a sample to judge.
    insert_operations([operation_row(i, at=later(3000), attempts=4) for i in range(19)])
    # Alert deliveries retrying against a dead channel do not count, however many attempts they used.
    insert_operations(
        [operation_row(100 + i, kind="alert", name="alert.slack", at=later(3000), attempts=9) for i in range(50)]
    )
    run_checks_fresh(now, config)
    assert _fired("attempts", "average") == []

    insert_operations([operation_row(200 + i, at=later(3100), attempts=1) for i in range(19)])
    run_checks_fresh(later(3610), config)  # 38 finished, 95 attempts: 2.5 > 2
    insert_operations([operation_row(300 + i, state="dead", at=later(3200), attempts=4) for i in range(40)])
    run_checks_fresh(later(3620), config)  # 78 finished, 255 attempts: 3.27 > 3
    run_checks_fresh(later(3600 + 3600), config)  # the hour is over: nothing finished, recovered

    assert _fired("attempts", "average") == [("warning", "firing"), ("critical", "firing"), ("info", "recovered")]
    warning = alerts("attempts")[0]
    assert warning.context["value"] == "2.50" and warning.context["sample"] == "38 finished"


def test_cards_show_due_operations_and_average_attempts_graded_by_the_same_thresholds(sqlite_app):
    _waiting(101, 0, T0)
    insert_operations([operation_row(200 + i, at=later(10), attempts=3) for i in range(4)])
    cards = {
        metric.key: metric
        for metric in health_page.health_metrics("1h", sqlite_app.config["HEALTH_THRESHOLDS"], now=later(60))
    }
    assert (cards["queue_depth"].value, cards["queue_depth"].status) == (101.0, "amber")
    assert cards["queue_depth"].detail.startswith("101 due and waiting; Huey: ")
    assert (cards["avg_attempts"].value, cards["avg_attempts"].status) == (3.0, "amber")
