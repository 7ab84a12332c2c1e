"""The tasks themselves: run one operation, put back an interrupted one, tick periodic jobs."""

from __future__ import annotations

import logging

from flask import Flask
from huey import Huey, crontab
from huey.signals import SIGNAL_INTERRUPTED

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services import engine, jobs, reconciler
from webapp.services.doorbell import ring_now

log = logging.getLogger("backstop.tasks")


def register_tasks(huey: Huey, app: Flask):
    """Register Backstop's tasks on ``huey``, bound to ``app``; return ``run_operation``."""

    @huey.task(name="run_operation")
    def run_operation(operation_id: int):
        """Claim and run one operation; a delivery that arrives early re-rings for its time."""
        with app.app_context():
            try:
                result = engine.execute(operation_id,
                                        default_lease=app.config["OPERATION_LEASE_SECONDS"])
            finally:
                db.session.remove()
        if result.outcome == "not_claimed" and result.due_at and result.due_at > utcnow():
            ring_now(operation_id, result.due_at)
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


def put_back_running(operation_id: int) -> bool:
    """Return a running operation to pending because its worker was interrupted."""
    operation = db.session.get(Operation, operation_id)
    if operation is None or operation.state != "running":
        db.session.rollback()
        return False
    number = operation.attempts
    db.session.rollback()
    restored = engine.put_back(operation_id, number, now=utcnow(), reason="worker interrupted")
    log.warning("operation %s interrupted at attempt %s; put back: %s", operation_id, number, restored)
    return restored


def run_periodic_jobs(app: Flask) -> None:
    """One tick: give each periodic job its chance to run."""
    config = app.config
    jobs.run_exclusive(
        reconciler.JOB_NAME,
        lambda now: str(reconciler.reconcile(now, batch_size=config["RECONCILE_BATCH_SIZE"],
                                             redeliver_after=config["REDELIVER_AFTER_SECONDS"])),
        interval_seconds=config["RECONCILE_INTERVAL_SECONDS"],
        lease_seconds=config["RECONCILE_LEASE_SECONDS"],
    )
