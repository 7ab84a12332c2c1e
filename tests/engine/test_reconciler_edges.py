"""The reconciler's time edges: a lease ends after its expiry instant, a ring is overdue at its window."""

from __future__ import annotations

from datetime import timedelta

from tests.engine.scripted import LEASE, NAME, T0, new_op
from tests.support.reads import load
from webapp.config import load as load_settings
from webapp.extensions import db
from webapp.services.engine import operations, reconciler, runner

TICK = timedelta(microseconds=1)
WINDOW = 60  # redeliver_after, seconds


def reconcile(now, *, redeliver_after: float | None = None):
    """One reconciler pass with the settings' defaults (or another re-ring window)."""
    settings = load_settings({})
    if redeliver_after is not None:
        settings["REDELIVER_AFTER_SECONDS"] = float(redeliver_after)
    return reconciler.reconcile(now, settings)


def test_a_lease_that_runs_out_exactly_now_still_belongs_to_its_worker(sqlite_app, bell):
    operation_id = new_op("lease-edge")
    runner.claim(operation_id, now=T0)
    expiry = T0 + timedelta(seconds=LEASE)

    assert reconcile(expiry).recovered == 0
    assert load(operation_id).state == "running"
    assert reconcile(expiry + TICK).recovered == 1
    assert load(operation_id).state == "retrying"


def test_an_operation_rung_once_is_rung_again_exactly_one_window_later(sqlite_app, bell):
    # Due long ago, but rung (enqueued) at T0: the window counts from the ring.
    operation_id = new_op("rung-edge", now=T0 - timedelta(hours=1))
    reconcile(T0, redeliver_after=WINDOW)
    bell.rings.clear()
    window_end = T0 + timedelta(seconds=WINDOW)

    assert reconcile(window_end - TICK, redeliver_after=WINDOW).rung == 0
    assert reconcile(window_end, redeliver_after=WINDOW).rung == 1
    assert bell.rings == [(operation_id, None)]


def test_a_retry_is_rung_again_exactly_one_window_after_it_fell_due(sqlite_app, bell):
    # Failed at T0 (rung then, for its due time T0 + 2 s): overdue one window after that due time.
    operation_id = new_op("due-edge", "transient")
    due = runner.execute(operation_id, now=T0, clock=lambda: T0).due_at
    assert due == T0 + timedelta(seconds=2)
    bell.rings.clear()
    overdue = due + timedelta(seconds=WINDOW)

    assert reconcile(overdue - TICK, redeliver_after=WINDOW).rung == 0
    assert reconcile(overdue, redeliver_after=WINDOW).rung == 1
    assert bell.rings == [(operation_id, None)]


def test_a_new_report_counts_nothing_and_names_each_count():
    report = reconciler.ReconcileReport()
    assert str(report) == "recovered=0 promoted=0 rung=0"

    report.rung += 2

    assert str(report) == "recovered=0 promoted=0 rung=2"


def test_with_the_default_settings_it_rings_one_batch_per_pass_after_one_window(sqlite_app, bell):
    defaults = load_settings({})
    window = timedelta(seconds=defaults["REDELIVER_AFTER_SECONDS"])
    ids = [
        operations.create_operation(NAME, {}, idempotency_key=f"default-{n}", now=T0).id
        for n in range(defaults["RECONCILE_BATCH_SIZE"] + 1)
    ]
    db.session.commit()

    assert reconcile(T0 + window - TICK).rung == 0
    assert reconcile(T0 + window).rung == len(ids) - 1  # one batch
    assert reconcile(T0 + window).rung == 1
