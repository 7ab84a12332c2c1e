"""Auto-requeue: one automatic retry for dead operations whose last error was transient."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import select

from webapp.domain.errors import ErrorKind
from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import AutoRequeue, Operation
from webapp.services.engine.operations import OperationError, retry_dead
from webapp.services.engine.periodic import periodic_job

log = logging.getLogger("backstop.maintenance")

AUTO_REQUEUE_BY = "auto-requeue"


def requeue_candidates(now: datetime, config: Mapping) -> list[int]:
    """Dead operations due for their one automatic retry, oldest death first."""
    cutoff = now - timedelta(seconds=config["AUTO_REQUEUE_AFTER_SECONDS"])
    ids = (
        db.session.execute(
            select(Operation.id)
            .where(
                Operation.state == State.DEAD.value,
                Operation.resolved_at.is_(None),
                Operation.dead_at <= cutoff,
                Operation.error_kind == ErrorKind.TRANSIENT.value,
                Operation.attempts < config["AUTO_REQUEUE_MAX_ATTEMPTS"],
                Operation.kind.in_(config["AUTO_REQUEUE_KINDS"]),
                Operation.id.not_in(select(AutoRequeue.operation_id)),
            )
            .order_by(Operation.dead_at, Operation.id)
            .limit(config["AUTO_REQUEUE_BATCH_SIZE"])
        )
        .scalars()
        .all()
    )
    db.session.rollback()
    return list(ids)


@periodic_job("auto_requeue", interval="AUTO_REQUEUE_INTERVAL_SECONDS", lease="AUTO_REQUEUE_LEASE_SECONDS", order=10)
def auto_requeue(now: datetime, config: Mapping) -> str:
    """Retry, once each, dead operations whose last error was transient and that died long enough ago.

    Permanent failures are never retried; an operation at the attempt cap is left to people.
    """
    requeued = skipped = 0
    for operation_id in requeue_candidates(now, config):
        operation = db.session.get(Operation, operation_id, populate_existing=True)
        if operation is None or operation.state != State.DEAD or operation.resolved_at is not None:
            db.session.rollback()  # resolved or retried by a person meanwhile
            skipped += 1
            continue
        # The mark commits in retry_dead's own transaction, so "once" holds even across crashes.
        db.session.add(AutoRequeue(operation_id=operation_id, requeued_at=now, attempts_before=operation.attempts))
        try:
            retry_dead(operation_id, by=AUTO_REQUEUE_BY, now=now)
        except OperationError:
            db.session.rollback()
            skipped += 1
            continue
        requeued += 1
        log.info(
            "auto-requeued dead operation %s after a transient failure",
            operation_id,
            extra={"operation_id": operation_id},
        )
    return f"requeued={requeued} skipped={skipped}"
