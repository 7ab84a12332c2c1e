"""Bulk-job snapshots do not pile up: unconfirmed drafts expire, finished jobs follow a retention setting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.support.console import make_op
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import BulkJob, BulkJobItem
from webapp.services.console import bulk
from webapp.services.console.filters import Filters
from webapp.services.maintenance import cleanup


def _items(job_id: int) -> int:
    count = db.session.execute(
        select(func.count()).select_from(BulkJobItem).where(BulkJobItem.bulk_job_id == job_id)
    ).scalar_one()
    db.session.rollback()
    return count


def _age(job_id: int, **moments) -> None:
    db.session.execute(update(BulkJob).where(BulkJob.id == job_id).values(**moments))
    db.session.commit()


def test_a_draft_left_unconfirmed_expires_and_cleanup_removes_it(sqlite_app):
    config = sqlite_app.config
    for _ in range(3):
        make_op()
    now = utcnow()
    stale = bulk.create_draft(
        Filters(), by="a", now=now - timedelta(minutes=config["BULK_DRAFT_EXPIRE_MINUTES"] + 1)
    ).id
    fresh = bulk.create_draft(Filters(), by="a", now=now).id
    assert _items(stale) == _items(fresh) == 3
    with pytest.raises(bulk.BulkError, match="expired"):
        bulk.start(stale, by="a", now=now, draft_expire_minutes=config["BULK_DRAFT_EXPIRE_MINUTES"])

    report = cleanup.cleanup(now, config)

    assert report.bulk_jobs == 1
    assert set(db.session.execute(select(BulkJob.id)).scalars()) == {fresh}
    assert _items(stale) == 0 and _items(fresh) == 3


def test_finished_bulk_jobs_are_kept_for_their_retention_then_deleted(sqlite_app):
    config = dict(sqlite_app.config, RETENTION_BULK_JOBS_DAYS=30, CLEANUP_BATCH_SIZE=2)
    for _ in range(5):
        make_op()
    now = utcnow()
    old_done, recent_done, old_running = (bulk.create_draft(Filters(), by="a", now=now).id for _ in range(3))
    _age(old_done, state="done", finished_at=now - timedelta(days=31), created_at=now - timedelta(days=31))
    _age(recent_done, state="cancelled", finished_at=now - timedelta(days=29))
    _age(old_running, state="running", created_at=now - timedelta(days=40))

    report = cleanup.cleanup(now, config)

    assert report.bulk_jobs == 1
    kept = set(db.session.execute(select(BulkJob.id)).scalars())
    assert kept == {recent_done, old_running}
    assert _items(old_done) == 0 and _items(recent_done) == 5 and _items(old_running) == 5
