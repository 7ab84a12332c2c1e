"""Retry everything matching: a snapshot taken when shown, cancelled between batches, resumed after its cursor."""

from __future__ import annotations

import re

import pytest

from tests.support.console import make_op, post
from webapp.extensions import db
from webapp.models import BulkJob
from webapp.services.console import bulk
from webapp.services.console.failures import get_operations
from webapp.services.console.filters import Filters
from webapp.services.engine import runner

# --- retry everything matching: the snapshot ----------------------------------------------


def test_bulk_job_acts_on_the_snapshot_shown_not_later_arrivals(client):
    shown = [make_op(kind="webhook", error="Database down") for _ in range(3)]
    make_op(kind="email")  # does not match the filter
    preview = post(client, "/admin/bulk-jobs", {"kind": "webhook", "status": "unresolved"})
    assert preview.status_code == 200 and "Retry 3 operations" in preview.text
    job_id = int(re.search(r"bulk-job-(\d+)", preview.text).group(1))
    late = make_op(kind="webhook", error="Database down")  # dies after the admin saw the count
    started = post(client, f"/admin/bulk-jobs/{job_id}/start")
    assert started.status_code == 200 and 'hx-trigger="every 1s"' in started.text
    assert post(client, f"/admin/bulk-jobs/{job_id}/start").status_code == 409
    job = bulk.get_job(job_id)
    assert job.state == "queued" and job.total == 3 and job.operation_id
    # The worker's half: run the admin.bulk_retry operation the way a worker would.
    assert runner.execute(job.operation_id).outcome == "succeeded"
    job = bulk.get_job(job_id)
    assert (job.state, job.processed, job.succeeded, job.skipped) == ("done", 3, 3, 0)
    states = {op.id: op.state for op in get_operations([*(op.id for op in shown), late.id])}
    assert [states[op.id] for op in shown] == ["pending"] * 3 and states[late.id] == "dead"
    progress = client.get(f"/admin/partials/bulk-jobs/{job_id}")
    assert "3 of 3 processed" in progress.text and "opsChanged" in progress.headers["HX-Trigger"]


def test_bulk_job_cancel_stops_between_batches(sqlite_app):
    ops = [make_op() for _ in range(5)]
    job = bulk.create_draft(Filters(), by="admin@example.com")
    bulk.start(job.id, by="admin@example.com")
    bulk.cancel(job.id)
    result = bulk.run_job(job.id, "admin@example.com", batch_size=2)
    assert result.state == "cancelled" and result.processed == 0
    assert {op.state for op in get_operations([op.id for op in ops])} == {"dead"}
    draft = bulk.create_draft(Filters(), by="admin@example.com")
    assert bulk.cancel(draft.id).state == "cancelled"
    with pytest.raises(bulk.BulkError, match=rf"^bulk job {draft.id} has already finished \(cancelled\)$"):
        bulk.cancel(draft.id)
    with pytest.raises(bulk.BulkError):
        bulk.start(draft.id, by="admin@example.com")


def test_bulk_job_resumes_after_its_cursor(sqlite_app):
    ops = [make_op() for _ in range(5)]
    job = bulk.create_draft(Filters(), by="a")
    bulk.start(job.id, by="a")
    db.session.execute(
        BulkJob.__table__.update()
        .where(BulkJob.id == job.id)
        .values(cursor=sorted(op.id for op in ops)[1], processed=2)
    )
    db.session.commit()
    result = bulk.run_job(job.id, "a", batch_size=2)
    assert (result.state, result.processed, result.succeeded) == ("done", 5, 3)


# --- a bulk job whose operation dies ---


def test_bulk_job_whose_operation_dies_shows_as_failed(sqlite_app, monkeypatch):
    from webapp.domain.errors import PermanentError

    make_op()
    job = bulk.start(bulk.create_draft(Filters(), by="a").id, by="a")

    def broken(job_id, by, **kwargs):
        raise PermanentError("snapshot table is unreadable")

    monkeypatch.setattr(bulk, "run_job", broken)
    assert runner.execute(job.operation_id).outcome == "dead"
    failed = bulk.get_job(job.id)
    assert failed.state == "failed" and failed.error == "snapshot table is unreadable" and failed.finished
