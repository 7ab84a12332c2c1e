"""Pausing one operation name (for example while a provider is down) and resuming it.

While a name is paused its operations are still created and stored; the engine's claim
skips them (a ``not_claimed`` result) and the reconciler does not re-ring them. Resuming
deletes the pause and rings every waiting operation of that name in creation order, so
the queue drains oldest first.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select, union_all, update

from webapp.domain.states import CLAIMABLE
from webapp.domain.text import text_problem
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationPause
from webapp.services.engine.doorbell import ring_after_commit
from webapp.services.engine.operations import checked_note
from webapp.services.engine.registry import registry

log = logging.getLogger("backstop.pauses")

RESUME_BATCH = 500


class PauseError(ValueError):
    """A pause or resume that cannot apply (unknown name, missing actor)."""


def _check(name: str, by: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 120:
        raise PauseError("an operation name of 1 to 120 characters is required")
    if problem := text_problem(name):
        raise PauseError(f"the operation name {problem}")
    if not (by or "").strip():
        raise PauseError("who pauses or resumes must be recorded")
    return name


def is_paused(name: str) -> bool:
    """Whether operations called ``name`` are on hold."""
    paused = db.session.execute(select(OperationPause.name).where(OperationPause.name == name)).first()
    db.session.rollback()
    return paused is not None


def list_pauses() -> list[dict]:
    """Every pausable name (each registered handler, plus any paused name) with its state.

    Each item: name, kind, paused, paused_at, paused_by, note, waiting (claimable operations).
    """
    pauses = {row.name: row for row in db.session.execute(select(OperationPause)).scalars()}
    # One equality per state (not ``state IN``): SQLite then seeks the (name, state) index for each
    # name instead of walking all of it, every operation ever, to count the few waiting ones.
    waiting: dict[str, int] = {}
    per_state = [
        select(Operation.name, func.count().label("waiting")).where(Operation.state == state).group_by(Operation.name)
        for state in sorted(state.value for state in CLAIMABLE)
    ]
    for name, count in db.session.execute(union_all(*per_state)).all():
        waiting[name] = waiting.get(name, 0) + count
    items = []
    for name in sorted(set(registry.names()) | set(pauses)):
        row = pauses.get(name)
        kind = registry.get(name).kind if name in registry else None
        items.append(
            {
                "name": name,
                "kind": kind,
                "paused": row is not None,
                "paused_at": row.paused_at if row else None,
                "paused_by": row.paused_by if row else None,
                "note": row.note if row else None,
                "waiting": waiting.get(name, 0),
            }
        )
    db.session.rollback()
    return items


def pause(name: str, by: str, note: str = "", *, now: datetime | None = None) -> dict:
    """Hold the processing of operations called ``name``; idempotent (the first pause is kept). Commits.

    A note over the limit is refused (``NoteTooLong``), never cut short.
    """
    note = checked_note(note)
    name = _check(name, by)
    if name not in registry:
        raise PauseError(f"no handler is registered for {name!r}")
    now = now or utcnow()
    row = db.session.get(OperationPause, name)
    if row is None:
        db.session.add(OperationPause(name=name, paused_at=now, paused_by=by.strip()[:255], note=note))
        db.session.commit()
        log.warning("operations %s paused by %s", name, by, extra={"operation_name": name, "by": by})
    else:
        db.session.rollback()
    return next(item for item in list_pauses() if item["name"] == name)


def resume(name: str, by: str, *, now: datetime | None = None) -> int:
    """Lift the pause on ``name`` and ring its due operations oldest first; return how many. Commits.

    Resuming a name that is not paused changes nothing and returns 0.
    """
    name = _check(name, by)
    now = now or utcnow()
    deleted = db.session.execute(OperationPause.__table__.delete().where(OperationPause.name == name)).rowcount
    db.session.commit()
    if not deleted:
        return 0
    rung = _ring_waiting(name, now)
    log.warning(
        "operations %s resumed by %s; %d rung in order",
        name,
        by,
        rung,
        extra={"operation_name": name, "by": by, "rung": rung},
    )
    return rung


def _ring_waiting(name: str, now: datetime) -> int:
    """Ring the due operations of ``name`` in (created_at, id) order, one short transaction per batch."""
    rung, after = 0, None
    while True:
        query = (
            select(Operation.id, Operation.created_at)
            .where(
                Operation.name == name,
                Operation.state.in_([s.value for s in CLAIMABLE]),
                Operation.next_attempt_at <= now,
            )
            .order_by(Operation.created_at, Operation.id)
            .limit(RESUME_BATCH)
        )
        if after is not None:
            created, last_id = after
            query = query.where(
                (Operation.created_at > created) | ((Operation.created_at == created) & (Operation.id > last_id))
            )
        rows = db.session.execute(query).all()
        if not rows:
            db.session.rollback()
            return rung
        ids = [row.id for row in rows]
        db.session.execute(
            update(Operation)
            .where(Operation.id.in_(ids))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        for operation_id in ids:
            ring_after_commit(db.session, operation_id, stamp=now)
        db.session.commit()  # rings this batch, in order, before the next batch is read
        rung += len(ids)
        after = (rows[-1].created_at, rows[-1].id)
