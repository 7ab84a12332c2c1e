"""Helpers for the alerting, maintenance, metrics and pause tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select

from tests.support.reads import detached
from webapp.domain.errors import PermanentError, TransientError
from webapp.domain.retry import RetryPolicy
from webapp.extensions import db
from webapp.models import Alert, Operation
from webapp.services.engine import operations, runner
from webapp.services.engine.registry import handler

T0 = datetime(2026, 3, 1, 12, 0, 0)


@handler("test.email_bounce", kind="email", policy=RetryPolicy.retries(0))
def email_bounce(ctx):
    """An email whose recipient does not exist: dead at once."""
    raise PermanentError(f"550 mailbox unavailable: {ctx.payload.get('to', 'nobody@example.com')}")


@handler("test.email_flaky", kind="email", policy=RetryPolicy.retries(0))
def email_flaky(ctx):
    """An email whose provider timed out: dead after one (transient) attempt."""
    raise TransientError("SMTP connection timed out")


@handler("test.webhook_broken", kind="webhook", policy=RetryPolicy.retries(0))
def webhook_broken(ctx):
    """A webhook whose processing fails permanently."""
    raise PermanentError("purchase not found for checkout session")


@handler("test.email_ok", kind="email", policy=RetryPolicy.retries(0))
def email_ok(ctx):
    """An email that goes out."""


def run_at(operation_id: int, when: datetime):
    """Run one operation in-process with the clock stopped at ``when``."""
    return runner.execute(operation_id, now=when, clock=lambda: when)


def create(name: str, key: str, when: datetime = T0, subject: str | None = None, **payload) -> int:
    """Create and commit an operation at ``when``; return its id."""
    operation = operations.create_operation(name, payload, idempotency_key=key, subject=subject, now=when)
    db.session.commit()
    return operation.id


def create_and_run(name: str, key: str, when: datetime = T0, subject: str | None = None, **payload) -> int:
    """Create an operation at ``when`` and run it once then."""
    operation_id = create(name, key, when, subject, **payload)
    run_at(operation_id, when)
    return operation_id


def alerts(type_: str | None = None) -> list[Alert]:
    """Alert rows (detached), oldest first."""
    query = select(Alert).order_by(Alert.id)
    if type_:
        query = query.where(Alert.type == type_)
    return detached(lambda: db.session.execute(query).scalars().all())


def deliver_all(when: datetime) -> list:
    """Run every waiting alert operation at ``when``; return their results."""
    ids = (
        db.session.execute(
            select(Operation.id)
            .where(Operation.kind == "alert", Operation.state.in_(["pending", "retrying"]))
            .order_by(Operation.id)
        )
        .scalars()
        .all()
    )
    db.session.rollback()
    return [run_at(operation_id, when) for operation_id in ids]


def insert_operations(rows: list[dict], chunk: int = 10_000) -> None:
    """Bulk-insert operation rows (dicts of column values) in chunks, committing each."""
    for start in range(0, len(rows), chunk):
        db.session.execute(insert(Operation), rows[start : start + chunk])
        db.session.commit()


def operation_row(
    i: int, *, kind: str = "email", name: str = "test.email_ok", state: str = "succeeded", at: datetime = T0, **extra
) -> dict:
    """Column values for one synthetic operation (bulk inserts)."""
    row = {
        "kind": kind,
        "name": name,
        "payload": {},
        "idempotency_key": f"bulk-{name}-{state}-{i}-{at:%s}",
        "state": state,
        "attempts": 1,
        "max_attempts": 1,
        "next_attempt_at": at,
        "created_at": at,
        "updated_at": at,
        "subject": None,
        "succeeded_at": at if state == "succeeded" else None,
        "dead_at": at if state == "dead" else None,
    }
    row.update(extra)
    return row


def later(seconds: float, base: datetime = T0) -> datetime:
    """``base`` plus ``seconds``."""
    return base + timedelta(seconds=seconds)


def beat_all_jobs(when: datetime) -> None:
    """Record a finished run of every periodic job at ``when`` (so no job_stale alert interferes)."""
    from webapp.services.engine import periodic

    for job in periodic.registered_jobs():
        periodic.run_exclusive(job.name, lambda now: "ok", interval_seconds=1, lease_seconds=30, clock=lambda: when)


def run_checks_fresh(when: datetime, config) -> str:
    """One pass of the checks at ``when`` with every job's heartbeat fresh."""
    from webapp.services.monitoring import checks

    beat_all_jobs(when)
    return checks.run_checks(when, config)
