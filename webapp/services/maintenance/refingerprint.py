"""The fingerprint backfill: recompute stored error fingerprints after the normalisation changed.

The engine stores an operation's fingerprint whenever it records a failure; only a change
to :mod:`webapp.domain.fingerprints` makes stored ones stale (``flask --app wsgi refingerprint``).
"""

from __future__ import annotations

from sqlalchemy import bindparam, or_, select, update

from webapp.domain.fingerprints import fingerprint_of
from webapp.extensions import db
from webapp.models import Operation


def refingerprint(batch: int = 5000) -> int:
    """Recompute every stored fingerprint (after the normalisation changed); return how many changed. Commits."""
    changed, last_id = 0, 0
    while True:
        rows = db.session.execute(
            select(Operation.id, Operation.error_class, Operation.error_message, Operation.error_fingerprint)
            .where(
                Operation.id > last_id, or_(Operation.error_class.is_not(None), Operation.error_message.is_not(None))
            )
            .order_by(Operation.id)
            .limit(batch)
        ).all()
        if not rows:
            db.session.rollback()
            return changed
        updates = [
            {"id": row.id, "error_fingerprint": fingerprint}
            for row in rows
            if (fingerprint := fingerprint_of(row.error_class, row.error_message)) != row.error_fingerprint
        ]
        if updates:
            table = Operation.__table__
            db.session.execute(
                update(table).where(table.c.id == bindparam("b_id")).values(error_fingerprint=bindparam("b_fp")),
                [{"b_id": u["id"], "b_fp": u["error_fingerprint"]} for u in updates],
            )
        db.session.commit()
        changed += len(updates)
        last_id = rows[-1].id
