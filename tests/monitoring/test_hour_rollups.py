"""The health page's hour roll-ups equal a direct count, at the window's edges and after late outcomes."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.support.console import make_op
from webapp.extensions import db
from webapp.models import OperationAttempt
from webapp.services.monitoring import health_page, hourly

NOW = datetime(2026, 11, 20, 12, 34, 56)
SINCE = NOW - timedelta(days=7)  # 2026-11-13 12:34:56, inside its hour


def _op(state, created, *, attempts=1, finished=None, kind="email", name="email.welcome"):
    """An operation created at ``created`` that ended (if it did) at ``finished``, with its attempts."""
    fields = dict(created_at=created, attempts=attempts, dead_ago=timedelta(0))
    if state == "succeeded":
        fields["succeeded_at"] = finished
    if state == "dead":
        fields["dead_at"] = finished
    operation = make_op(state, kind, name, **fields)
    for number in range(1, attempts + 1):
        last = number == attempts
        outcome = {"succeeded": "succeeded", "dead": "dead"}.get(state, "failed") if last else "failed"
        db.session.add(
            OperationAttempt(
                operation_id=operation.id,
                number=number,
                started_at=created + timedelta(seconds=number),
                outcome=outcome,
            )
        )
    db.session.commit()
    return operation


def _mixed_rows():
    """States, kinds and times around every edge the roll-up has."""
    hour = hourly.hour_floor
    rows = [
        # Just before the window, at its very start, and in the rest of since's hour.
        ("succeeded", SINCE - timedelta(seconds=1), 1, SINCE - timedelta(seconds=1)),
        ("succeeded", SINCE, 1, SINCE),
        ("dead", SINCE + timedelta(minutes=5), 4, SINCE + timedelta(minutes=9)),
        # Exactly on whole-hour boundaries (belong to the hour they start).
        ("succeeded", hour(SINCE) + timedelta(hours=1), 2, hour(SINCE) + timedelta(hours=1)),
        ("dead", hour(NOW) - timedelta(hours=1), 1, hour(NOW)),
        # Created in one hour, finished in another; a retry still pending; one scheduled.
        ("succeeded", NOW - timedelta(days=3, minutes=50), 3, NOW - timedelta(days=3, minutes=2)),
        ("retrying", NOW - timedelta(days=2), 2, None),
        ("pending", NOW - timedelta(hours=5), 0, None),
        # The current (live) hour, and a little after ``now`` (clocks are never exact).
        ("succeeded", hour(NOW) + timedelta(minutes=1), 1, hour(NOW) + timedelta(minutes=2)),
        ("dead", hour(NOW), 2, NOW + timedelta(seconds=3)),
    ]
    made = []
    for index, (state, created, attempts, finished) in enumerate(rows):
        kind, name = ("webhook", "stripe.charge.refunded") if index % 3 == 0 else ("email", "email.welcome")
        made.append(_op(state, created, attempts=attempts, finished=finished, kind=kind, name=name))
    return made


def _nonzero(totals):
    return {key: row for key, row in totals.items() if any(row.values())}


def _build(now):
    """Refresh until every hour of the kept span is stored."""
    for _ in range(8):  # 169 missing hours, a day per run
        hourly.refresh(now)
    assert len(hourly.hours_to_rebuild(now)) == hourly.RECENT_HOURS + hourly.STALE_HOURS_PER_RUN


def test_stored_hours_plus_live_edges_equal_a_direct_count(app):
    _mixed_rows()
    direct = hourly.aggregate(SINCE, None)
    live_breakdown = health_page.breakdown("7d", NOW)
    live_trend = health_page.trend("7d", NOW)
    live_cards = {m.key: (m.value, m.detail) for m in health_page.health_metrics("7d", {}, NOW)}
    assert health_page.as_of("7d", NOW) is None  # nothing stored yet: all counted live

    _build(NOW)

    totals, as_of = hourly.window_totals(SINCE, NOW)
    assert as_of == NOW
    assert _nonzero(totals) == _nonzero(direct)
    assert health_page.breakdown("7d", NOW) == live_breakdown
    assert health_page.trend("7d", NOW) == live_trend
    assert {m.key: (m.value, m.detail) for m in health_page.health_metrics("7d", {}, NOW)} == live_cards
    # An hour later, before the job has stored the hour that just ended: counted live.
    next_hour = NOW + timedelta(hours=1)
    assert hourly.stored_as_of(next_hour - timedelta(days=7), next_hour) == NOW
    assert _nonzero(hourly.window_totals(next_hour - timedelta(days=7), next_hour)[0]) == _nonzero(
        hourly.aggregate(next_hour - timedelta(days=7), None)
    )
    # And the live count is the plain one: created in the window, by current state.
    webhook = next(row for row in live_breakdown if row["kind"] == "webhook")
    email = next(row for row in live_breakdown if row["kind"] == "email")
    assert (webhook["total"], webhook["succeeded"], webhook["failed"], webhook["dead"]) == (3, 1, 3, 1)
    assert (email["total"], email["succeeded"], email["failed"], email["dead"]) == (6, 3, 3, 2)
    assert live_cards["email_delivery_rate"][1] == "3 sent, 2 dead-lettered"


def test_a_late_outcome_shows_after_its_hour_is_rebuilt_and_the_page_says_how_old(app):
    operation = _mixed_rows()[7]  # an email pending, created five hours ago
    _build(NOW)
    later = NOW + timedelta(minutes=1)
    operation.state, operation.dead_at, operation.attempts = "dead", later, 4
    db.session.commit()

    stale = {row["kind"]: row for row in health_page.breakdown("7d", later)}
    assert health_page.as_of("7d", later) == NOW  # the page shows the stored part's age
    assert stale["email"]["dead"] == 2  # its creation hour was stored before it died
    # The dead card counts by dead_at: the current hour is live, so it shows at once.
    cards = {m.key: m.detail for m in health_page.health_metrics("7d", {}, later)}
    assert cards["email_delivery_rate"] == "2 sent, 3 dead-lettered"  # op 1 left the window

    rebuilt = later + timedelta(minutes=1)
    hourly.rebuild_hour(hourly.hour_floor(operation.created_at), rebuilt)
    db.session.commit()
    fresh = {row["kind"]: row for row in health_page.breakdown("7d", later)}
    assert fresh["email"]["dead"] == 3
    assert _nonzero(hourly.window_totals(SINCE, later)[0]) == _nonzero(hourly.aggregate(SINCE, None))


def test_refresh_work_per_run_is_bounded_and_old_hours_are_dropped(app):
    _build(NOW)
    assert len(hourly.hours_to_rebuild(NOW)) == hourly.RECENT_HOURS + hourly.STALE_HOURS_PER_RUN
    next_day = NOW + timedelta(days=1)
    hourly.refresh(next_day)  # 24 new hours missing: built in one run; the oldest day dropped
    assert hourly.hours_to_rebuild(next_day)[0] == hourly.hour_floor(next_day) - timedelta(hours=hourly.RECENT_HOURS)
    first = db.session.execute(db.select(db.func.min(hourly.OperationHourRollup.hour))).scalar()
    assert first == hourly.hour_floor(next_day - hourly.KEPT)
