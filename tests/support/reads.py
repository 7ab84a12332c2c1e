"""Reads the tests share: fresh, detached copies of operations and their attempts.

SQLite transactions here are immediate (they take the write lock), so a test must never
leave one open while a worker or another thread needs to write: every read here runs in
its own transaction and ends it.
"""

from __future__ import annotations

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Operation, OperationAttempt


def detached(fetch):
    """Run ``fetch`` in a fresh transaction and return its result detached (no lock left open)."""
    db.session.expire_all()
    result = fetch()
    db.session.expunge_all()
    db.session.rollback()
    return result


def load(operation_id: int) -> Operation:
    """A fresh copy of an operation from the database."""
    return detached(lambda: db.session.get(Operation, operation_id))


def attempts_of(operation_id: int) -> list[OperationAttempt]:
    """The operation's attempt rows, in order."""
    return detached(
        lambda: (
            db.session.execute(
                select(OperationAttempt)
                .where(OperationAttempt.operation_id == operation_id)
                .order_by(OperationAttempt.number, OperationAttempt.id)
            )
            .scalars()
            .all()
        )
    )
