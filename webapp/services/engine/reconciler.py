"""The reconciler: the sweep that makes the database, not the queue, the record.

Each pass, in bounded batches: recover ``running`` operations whose lease expired (the
worker died; the attempt is recorded as crashed), promote scheduled operations that are
due, and re-ring due operations nobody rang or whose ring was lost.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from webapp.domain.errors import TransientError
from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, OperationPause
from webapp.services.engine.doorbell import oldest_waiting_stamp, ring_after_commit
from webapp.services.engine.periodic import periodic_job
from webapp.services.engine.runner import record_failure

JOB_NAME = "reconciler"
# The finest step of a stored time (microseconds): "strictly before" a stamp.
STAMP_RESOLUTION = timedelta(microseconds=1)


@dataclass
class ReconcileReport:
    """Counts from one reconciler pass."""

    recovered: int = 0
    promoted: int = 0
    rung: int = 0

    def __str__(self) -> str:
        return f"recovered={self.recovered} promoted={self.promoted} rung={self.rung}"


class WorkerCrashed(TransientError):
    """The worker running an attempt disappeared before its lease ran out."""


# First in every tick: the jobs after it see operations it recovered and promoted.
@periodic_job(JOB_NAME, interval="RECONCILE_INTERVAL_SECONDS", lease="RECONCILE_LEASE_SECONDS", order=0)
def reconcile(now: datetime, config: Mapping) -> ReconcileReport:
    """One full pass of the reconciler (each step its own short transaction), in configured batches."""
    batch_size = config["RECONCILE_BATCH_SIZE"]
    return ReconcileReport(
        recovered=recover_expired_leases(now, batch_size) + recover_dead_local_workers(now, batch_size),
        promoted=promote_scheduled(now, batch_size),
        rung=ring_overdue(now, batch_size, config["REDELIVER_AFTER_SECONDS"]),
    )


def _lock_batch(query, batch_size: int):
    """Limit a selection and, on PostgreSQL, skip rows another transaction holds."""
    query = query.limit(batch_size)
    if db.session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


def recover_expired_leases(now: datetime, batch_size: int) -> int:
    """Record crashed attempts for running operations whose lease expired; retry or bury them."""
    rows = db.session.execute(
        _lock_batch(
            select(Operation.id, Operation.attempts)
            .where(Operation.state == State.RUNNING.value, Operation.lease_expires_at < now)
            .order_by(Operation.lease_expires_at),
            batch_size,
        )
    ).all()
    db.session.rollback()
    recovered = 0
    for operation_id, attempts in rows:
        crash = WorkerCrashed("lease expired: the worker stopped before finishing this attempt")
        result = record_failure(operation_id, attempts, crash, now=now, outcome_override="crashed")
        if result.outcome != "lost_lease":
            recovered += 1
    return recovered


def recover_dead_local_workers(now: datetime, batch_size: int) -> int:
    """Recover running operations whose worker was a process of this host that no longer exists.

    A ``kill -9``ed consumer's attempts need not wait for their lease: its attempts name
    ``host:pid:thread``, and a pid that is gone on this host ran nothing any more. (Host names
    must be unique among the machines sharing a database, as they are for leases' holders.)
    """
    host = socket.gethostname()
    rows = db.session.execute(
        select(Operation.id, Operation.attempts, OperationAttempt.worker)
        .join(
            OperationAttempt,
            (OperationAttempt.operation_id == Operation.id) & (OperationAttempt.number == Operation.attempts),
        )
        .where(
            Operation.state == State.RUNNING.value,
            OperationAttempt.finished_at.is_(None),
            OperationAttempt.worker.like(f"{_escape_like(host)}:%", escape="\\"),
        )
        .limit(batch_size)
    ).all()
    db.session.rollback()
    recovered = 0
    for operation_id, attempts, worker in rows:
        if _process_alive(worker):
            continue
        crash = WorkerCrashed(f"the worker process ({worker}) is gone: it stopped before finishing this attempt")
        result = record_failure(operation_id, attempts, crash, now=now, outcome_override="crashed")
        if result.outcome != "lost_lease":
            recovered += 1
    return recovered


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _process_alive(worker: str) -> bool:
    """Whether the ``host:pid:thread`` worker's process still exists (on this host)."""
    try:
        pid = int(worker.split(":", 2)[1])
    except (IndexError, ValueError):
        return True  # not a worker name we wrote: leave it to its lease
    if pid == os.getpid():
        return True  # this very process: its running attempts are alive or will be put back
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def recover_after_restart(now: datetime, config: Mapping) -> ReconcileReport:
    """What a consumer does as it starts: recover its dead predecessors' work and re-ring what is due.

    A consumer killed with ``kill -9`` loses the rings it had taken from the queue and leaves
    its attempts running; its replacement picks both up at once instead of waiting for the
    leases and the next reconciler pass. Rings are idempotent (the claim decides).
    """
    batch_size = config["RECONCILE_BATCH_SIZE"]
    return ReconcileReport(
        recovered=recover_dead_local_workers(now, batch_size),
        promoted=promote_scheduled(now, batch_size),
        rung=ring_overdue(now, batch_size, 0),
    )


def promote_scheduled(now: datetime, batch_size: int) -> int:
    """Move due scheduled operations to ``pending`` and ring for them."""
    ids = (
        db.session.execute(
            _lock_batch(
                select(Operation.id)
                .where(Operation.state == State.SCHEDULED.value, Operation.next_attempt_at <= now)
                .order_by(Operation.next_attempt_at),
                batch_size,
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        db.session.rollback()
        return 0
    db.session.execute(
        update(Operation)
        .where(Operation.id.in_(ids), Operation.state == State.SCHEDULED.value)
        .values(state=State.PENDING.value, enqueued_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    for operation_id in ids:
        ring_after_commit(db.session, operation_id, stamp=now)
    db.session.commit()
    return len(ids)


def ring_cutoff(now: datetime, redeliver_after: float) -> datetime:
    """Latest ``enqueued_at`` (and due time) an operation may have for its ring to count as lost."""
    cutoff = now - timedelta(seconds=redeliver_after)
    oldest = oldest_waiting_stamp()
    if oldest is not None:
        # Strictly before the oldest waiting ring: that ring's own operation is in line.
        cutoff = min(cutoff, oldest - STAMP_RESOLUTION)
    return cutoff


def ring_overdue(now: datetime, batch_size: int, redeliver_after: float) -> int:
    """Ring for due operations overdue by more than ``redeliver_after`` and not rung since.

    While rings wait in the queue, only operations rung before the oldest of them are taken:
    their rings have left the queue, so if they still wait, the ring was lost. The others'
    rings are still in line, and a second ring would only lengthen the line.
    """
    cutoff = ring_cutoff(now, redeliver_after)
    ids = (
        db.session.execute(
            _lock_batch(
                select(Operation.id)
                .where(
                    Operation.state.in_([State.PENDING.value, State.RETRYING.value]),
                    Operation.next_attempt_at <= cutoff,
                    or_(Operation.enqueued_at.is_(None), Operation.enqueued_at <= cutoff),
                    Operation.name.not_in(select(OperationPause.name)),
                )  # resume rings them
                .order_by(Operation.next_attempt_at),
                batch_size,
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        db.session.rollback()
        return 0
    db.session.execute(
        update(Operation)
        .where(Operation.id.in_(ids))
        .values(enqueued_at=now)
        .execution_options(synchronize_session=False)
    )
    for operation_id in ids:
        ring_after_commit(db.session, operation_id, stamp=now)
    db.session.commit()
    return len(ids)
