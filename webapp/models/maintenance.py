"""Maintenance records: which dead letters were auto-requeued, and where each cleanup walk stands."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.payments import StripeEvent
from webapp.models.types import BigId


class AutoRequeue(db.Model):
    """A dead operation the auto-requeue job retried (it is retried that way only once)."""

    __tablename__ = "auto_requeues"

    operation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    requeued_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts_before: Mapped[int]


class MaintenanceCursor(db.Model):
    """How far a cleanup step has got through a table, so each run starts where the last stopped."""

    __tablename__ = "maintenance_cursors"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    position: Mapped[datetime | None]
    # The primary key of the last row done at ``position`` (ties on the timestamp).
    last_key: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# Deleting an operation sets stripe_events.operation_id to NULL (ON DELETE SET NULL); without
# an index each deleted operation would scan stripe_events, so cleanup batches would slow
# down as events pile up. Declared here, with the cleanup that needs it (and in 0005).
Index("ix_stripe_events_operation_id", StripeEvent.operation_id)
