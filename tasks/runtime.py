"""The tasks themselves: run one operation, put back an interrupted one, tick the periodic jobs."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Flask
from huey import Huey, crontab
from huey.signals import SIGNAL_INTERRUPTED
from sqlalchemy import select

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.services.engine import periodic, runner
from webapp.services.engine.doorbell import ring_now

log = logging.getLogger("backstop.tasks")


def register_tasks(huey: Huey, app: Flask):
    """Register Backstop's tasks on ``huey``, bound to ``app``; return ``run_operation``."""

    @huey.task(name="run_operation")
    def run_operation(operation_id: int, stamp: datetime | None = None):
        """Claim and run one operation; a delivery that arrives early re-rings for its time."""
        with app.app_context():
            try:
                run_and_reschedule(operation_id, lease=app.config["OPERATION_LEASE_SECONDS"], stamp=stamp)
            finally:
                db.session.remove()
        return None

    @huey.signal(SIGNAL_INTERRUPTED)
    def put_back_interrupted(signal, task, *args, **kwargs):
        """A worker stopped mid-operation: give the attempt back and ring again."""
        if task.name != "run_operation" or not task.args:
            return
        operation_id = task.args[0]
        with app.app_context():
            try:
                put_back_running(operation_id)
            finally:
                db.session.remove()

    @huey.periodic_task(crontab(), name="periodic_tick")
    def periodic_tick():
        """Run every periodic job that is due (each guarded by its own database lease)."""
        with app.app_context():
            try:
                run_periodic_jobs(app)
            finally:
                db.session.remove()

    return run_operation


def run_and_reschedule(
    operation_id: int, *, lease: float, clock=utcnow, stamp: datetime | None = None
) -> runner.RunResult:
    """Run an operation; if this delivery came before it was due, ring again for its time (same stamp)."""
    now = clock()
    result = runner.execute(operation_id, now=now, default_lease=lease)
    # Compare with the claim's time, not a later clock: if the due time passed while we
    # looked, ring at once rather than drop the ring (the reconciler would take minutes).
    if result.outcome == "not_claimed" and result.due_at and result.due_at > now:
        ring_now(operation_id, result.due_at if result.due_at > clock() else None, stamp)
    return result


def put_back_running(operation_id: int) -> bool:
    """Return a running operation to pending because this process's worker was interrupted."""
    operation = db.session.get(Operation, operation_id)
    if operation is None or operation.state != "running":
        db.session.rollback()
        return False
    number = operation.attempts
    holder = db.session.execute(
        select(OperationAttempt.worker)
        .where(
            OperationAttempt.operation_id == operation_id,
            OperationAttempt.number == number,
            OperationAttempt.finished_at.is_(None),
        )
        .order_by(OperationAttempt.id.desc())
        .limit(1)
    ).scalar()
    db.session.rollback()
    # The interrupted task may be a duplicate delivery that never claimed the operation while
    # another worker runs it: only an attempt claimed by this process is ours to give back.
    if not (holder or "").startswith(runner.worker_identity().rsplit(":", 1)[0] + ":"):
        log.info("operation %s is running in %s, not here; left alone", operation_id, holder)
        return False
    restored = runner.put_back(operation_id, number, now=utcnow(), reason="worker interrupted")
    log.warning("operation %s interrupted at attempt %s; put back: %s", operation_id, number, restored)
    return restored


def run_periodic_jobs(app: Flask) -> None:
    """One tick: give each registered periodic job, in tick order, its chance to run.

    Each job has its own lease, interval and heartbeat; one job failing to start (the
    database briefly away) does not keep the others from their turn.
    """
    for job in periodic.registered_jobs():
        try:
            periodic.run_job(job, app.config)
        except Exception:  # recorded in the log; the job's stale heartbeat raises the alarm
            db.session.rollback()
            log.exception("periodic job %s could not run", job.name)
