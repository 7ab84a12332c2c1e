"""Two reconcilers at once on PostgreSQL: each skips the rows the other's batch holds, never waits."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from tests.engine.scripted import LEASE, T0, new_op
from tests.support.postgres import postgres_app
from tests.support.reads import load
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.engine import reconciler, runner

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LATER = T0 + timedelta(minutes=10)


@pytest.fixture
def pg_app(tmp_path, templates):
    """App on PostgreSQL + RedisHuey (the rows-locking behaviour exists only there)."""
    with postgres_app(tmp_path, templates) as app:
        yield app


@contextmanager
def another_reconcilers_batch(operation_ids: list[int]):
    """Hold ``operation_ids`` locked in another connection, as a reconciler mid-batch does."""
    with db.engine.connect() as other:
        locked = other.execute(select(Operation.id).where(Operation.id.in_(operation_ids)).with_for_update()).all()
        assert len(locked) == len(operation_ids)
        yield
        other.rollback()


def never_wait() -> None:
    """Make this session fail fast instead of queueing behind a lock it should have skipped."""
    db.session.execute(text("SET lock_timeout = '2s'"))


def test_promotion_skips_the_operations_another_batch_holds(pg_app, bell):
    ids = [new_op(f"promote-{n}", run_at=T0 + timedelta(seconds=n + 1)) for n in range(4)]
    bell.rings.clear()

    with another_reconcilers_batch(ids[:2]):
        never_wait()
        assert reconciler.promote_scheduled(LATER, batch_size=10) == 2
    assert [load(i).state for i in ids] == ["scheduled", "scheduled", "pending", "pending"]
    assert reconciler.promote_scheduled(LATER, batch_size=10) == 2
    assert sorted(i for i, _ in bell.rings) == sorted(ids)  # each rung once


def test_re_ringing_skips_the_operations_another_batch_holds(pg_app, bell):
    ids = [new_op(f"overdue-{n}", now=T0 + timedelta(seconds=n)) for n in range(4)]
    bell.rings.clear()

    with another_reconcilers_batch(ids[:2]):
        never_wait()
        assert reconciler.ring_overdue(LATER, batch_size=10, redeliver_after=60) == 2
    assert [i for i, _ in bell.rings] == ids[2:]
    assert reconciler.ring_overdue(LATER, batch_size=10, redeliver_after=60) == 2
    assert sorted(i for i, _ in bell.rings) == sorted(ids)


def test_recovery_skips_the_expired_leases_another_batch_holds(pg_app, bell):
    ids = [new_op(f"crashed-{n}") for n in range(4)]
    for n, operation_id in enumerate(ids):
        runner.claim(operation_id, now=T0 + timedelta(seconds=n))
    expired = T0 + timedelta(seconds=LEASE + 10)

    with another_reconcilers_batch(ids[:2]):
        never_wait()
        assert reconciler.recover_expired_leases(expired, batch_size=10) == 2
    assert [load(i).state for i in ids] == ["running", "running", "retrying", "retrying"]
    assert reconciler.recover_expired_leases(expired, batch_size=10) == 2
