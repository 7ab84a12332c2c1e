"""Ringing the queue after commit: the queue only says "look at operation N", never remembers.

Services note which operations need a ring on the SQLAlchemy session; once the session
commits, every noted operation is rung. A ring that fails is logged and counted and then
left to the reconciler, which re-rings overdue operations: nothing is lost.

Each ring carries a *stamp*: the ``enqueued_at`` its operation was given when it was rung. The
queue is first in, first out, so an operation still waiting whose stamp is older than the
stamp of the oldest ring in the queue has had its ring taken out of the queue and lost (a
consumer killed between taking it and claiming). The reconciler re-rings only those while a
backlog waits, instead of adding a duplicate of every waiting ring to the back of the queue.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, scoped_session

log = logging.getLogger("backstop.doorbell")

_PENDING_KEY = "backstop.rings"


class Doorbell(Protocol):
    """Something that can tell workers to look at an operation, now or at ``eta``."""

    def ring(self, operation_id: int, eta: datetime | None = None, stamp: datetime | None = None) -> None: ...

    def depth(self) -> dict: ...

    def oldest_waiting(self) -> datetime | None: ...


class SilentDoorbell:
    """A doorbell nobody hears: operations wait for the reconciler. Used until a queue is bound."""

    def ring(self, operation_id: int, eta: datetime | None = None, stamp: datetime | None = None) -> None:
        """Do nothing; the reconciler will find the operation."""

    def depth(self) -> dict:
        """No queue, no depth."""
        return {"pending": 0, "scheduled": 0}

    def oldest_waiting(self) -> datetime | None:
        """Nothing waits in a queue that does not exist."""
        return None


class RingStats:
    """Counts of rings made and failed in this process.

    On Redis a ring counts as made once sent (its reply is read by the thread's next ring); one
    whose reply then proves an error is counted as failed as well.
    """

    rung = 0
    failed = 0


_doorbell: Doorbell = SilentDoorbell()


def set_doorbell(doorbell: Doorbell) -> None:
    """Install the process-wide doorbell (entry points bind the Huey one)."""
    global _doorbell
    _doorbell = doorbell


def get_doorbell() -> Doorbell:
    """The process-wide doorbell."""
    return _doorbell


def ring_after_commit(
    session: Session, operation_id: int, eta: datetime | None = None, *, stamp: datetime | None = None
) -> None:
    """Ring for ``operation_id`` once ``session`` commits; forget it if it rolls back.

    ``stamp``: the ``enqueued_at`` the caller wrote for this ring (see the module's docstring).
    """
    if isinstance(session, scoped_session):  # services pass db.session
        session = session()
    # Remember the savepoint (if any) the ring belongs to, so rolling that savepoint back forgets it.
    savepoint = session.get_nested_transaction()
    session.info.setdefault(_PENDING_KEY, []).append((operation_id, eta, stamp, savepoint))


def ring_now(operation_id: int, eta: datetime | None = None, stamp: datetime | None = None) -> bool:
    """Ring at once; return False (and log how long it tried) if the queue cannot be reached."""
    started = time.monotonic()
    try:
        _doorbell.ring(operation_id, eta, stamp)
    except Exception as exc:  # the queue being down must never fail the caller
        RingStats.failed += 1
        log.warning(
            "could not enqueue operation %s after %.3f s (%s: %s); the reconciler will",
            operation_id,
            time.monotonic() - started,
            type(exc).__name__,
            exc,
        )
        return False
    RingStats.rung += 1
    return True


@event.listens_for(Session, "after_commit")
def _ring_committed(session: Session) -> None:
    # after_commit also fires when a savepoint is released: ring only when the outermost
    # transaction commits, or a worker could look before the row is visible (or exists at all).
    if session.get_nested_transaction() is not None:
        return
    rings = session.info.pop(_PENDING_KEY, None)
    for operation_id, eta, stamp, _ in rings or ():
        ring_now(operation_id, eta, stamp)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)
        return
    rings = session.info.get(_PENDING_KEY)
    if rings:
        rings[:] = [ring for ring in rings if not _inside(ring[-1], previous_transaction)]


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction) -> None:
    # The outermost transaction ended without a commit ringing (closed, or rolled back
    # without a soft-rollback event): what it noted must not ring with a later transaction.
    if transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)


def oldest_waiting_stamp() -> datetime | None:
    """The stamp of the oldest ring waiting in the queue; None when none waits or it cannot be told."""
    try:
        return _doorbell.oldest_waiting()
    except Exception as exc:  # a queue that cannot be read tells nothing; the reconciler falls back
        log.warning("could not read the queue's oldest ring (%s: %s)", type(exc).__name__, exc)
        return None


def _inside(transaction, ancestor) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False
