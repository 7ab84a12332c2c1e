"""Rings lost with a killed consumer are found by the stamp of the oldest ring still in the queue.

A real SqliteHuey queue behind the app's doorbell. A consumer killed between taking a ring and
claiming its operation loses that ring; the rings behind it are still in line. Re-ringing every
waiting operation (what a starting consumer did) put a duplicate of the whole backlog at the
back of the queue on every restart; only the lost ones may be rung again.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from huey import SqliteHuey
from sqlalchemy import update

from tasks.queue import HueyDoorbell
from tasks.runtime import register_tasks
from tests.engine.scripted import T0, new_op
from tests.support.engine import ringing_into
from webapp.config import load as load_settings
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine import doorbell, reconciler


@pytest.fixture
def queue(sqlite_app, tmp_path):
    """The app rings into a real SqliteHuey queue for this test; the previous doorbell comes back after."""
    huey = SqliteHuey("lost-rings", filename=str(tmp_path / "queue.sqlite3"), results=False)
    bell = HueyDoorbell(huey, register_tasks(huey, sqlite_app))
    with ringing_into(bell):
        yield bell


def waiting(bell: HueyDoorbell) -> list[int]:
    """Operation ids of the rings in the queue, next first."""
    return [task.args[0] for task in bell.huey.pending() if task.name == bell.run_operation.name]


def three_rung_operations() -> list[int]:
    """Three operations created (and rung) a second apart."""
    return [new_op(f"ring-{n}", now=T0 + timedelta(seconds=n)) for n in range(3)]


def test_each_ring_carries_the_enqueued_at_it_was_rung_for(queue):
    first, second, third = three_rung_operations()

    assert [task.args for task in queue.huey.pending()] == [
        (first, T0),
        (second, T0 + timedelta(seconds=1)),
        (third, T0 + timedelta(seconds=2)),
    ]
    assert queue.oldest_waiting() == T0


def test_a_starting_consumer_rings_only_what_its_dead_predecessor_took(queue):
    first, second, third = three_rung_operations()
    queue.huey.dequeue()  # taken by a consumer that was killed before it claimed: lost

    report = reconciler.recover_after_restart(T0 + timedelta(seconds=30), load_settings({}))

    assert report.rung == 1
    assert waiting(queue) == [second, third, first]


def test_rings_a_microsecond_apart_are_told_apart(queue):
    first = new_op("first", now=T0)
    second = new_op("second", now=T0 + timedelta(microseconds=1))
    queue.huey.dequeue()  # the first ring is lost; the second, one microsecond younger, waits

    assert reconciler.recover_after_restart(T0 + timedelta(seconds=30), load_settings({})).rung == 1
    assert waiting(queue) == [second, first]


def test_a_starting_consumer_rings_nothing_before_it_is_due(queue):
    soon = new_op("soon", now=T0 - timedelta(seconds=10))
    queue.huey.flush()
    db.session.execute(
        update(Operation)
        .where(Operation.id == soon)
        .values(state="retrying", next_attempt_at=T0 + timedelta(milliseconds=500))
    )
    db.session.commit()

    assert reconciler.recover_after_restart(T0, load_settings({})).rung == 0
    assert waiting(queue) == []  # its ring waits in Huey's schedule, not in the queue


def test_the_reconciler_does_not_ring_again_what_waits_in_line(queue):
    first, second, third = three_rung_operations()
    queue.huey.dequeue()
    queue.huey.dequeue()  # two rings lost; the third still waits, however overdue

    rung = reconciler.ring_overdue(T0 + timedelta(hours=1), 100, redeliver_after=60)

    assert rung == 2
    assert waiting(queue) == [third, first, second]


def test_with_the_queue_empty_every_overdue_operation_is_rung(queue):
    operation_ids = three_rung_operations()
    queue.huey.flush()  # the queue lost everything (a Redis restart without persistence)

    assert queue.oldest_waiting() is None
    assert reconciler.recover_after_restart(T0 + timedelta(seconds=30), load_settings({})).rung == 3
    assert sorted(waiting(queue)) == sorted(operation_ids)


def test_a_ring_without_a_stamp_at_the_head_leaves_the_old_rule(queue):
    first, second, third = three_rung_operations()
    queue.huey.flush()
    queue.run_operation(second)  # as a Backstop before stamps enqueued it
    queue.run_operation(third, T0 + timedelta(seconds=2))

    assert queue.oldest_waiting() is None
    reconciler.ring_overdue(T0 + timedelta(hours=1), 100, redeliver_after=60)

    assert sorted(waiting(queue)) == sorted([second, third, first, second, third])


def test_an_unreadable_queue_leaves_the_old_rule(queue):
    class Unreadable:
        def oldest_waiting(self):
            raise ConnectionError("queue unreachable")

    with ringing_into(Unreadable()):
        assert doorbell.oldest_waiting_stamp() is None
        cutoff = reconciler.ring_cutoff(T0, 60)
    assert cutoff == T0 - timedelta(seconds=60)
