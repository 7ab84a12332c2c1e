"""The record of every reliable side effect, of each attempt at it, and of paused operation names."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.domain.states import State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.types import BigId, JsonDocument


class Operation(db.Model):
    """One side effect (an email, a webhook's processing, a job, an alert) and its state."""

    __tablename__ = "operations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(120))
    payload: Mapped[dict] = mapped_column(JsonDocument, default=dict)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str | None] = mapped_column(String(255))

    state: Mapped[str] = mapped_column(String(20), default=State.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    # When the operation may next be claimed; for a scheduled one, its run time.
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    run_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    # When the doorbell was last rung for it; the reconciler re-rings overdue ones.
    enqueued_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]

    error_class: Mapped[str | None] = mapped_column(String(200))
    error_kind: Mapped[str | None] = mapped_column(String(20))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_stack: Mapped[str | None] = mapped_column(Text)
    # The normalised error's fingerprint (webapp/domain/fingerprints.py), written with the error:
    # the admin console's Issues view groups dead operations by it in SQL.
    error_fingerprint: Mapped[str | None] = mapped_column(String(16))

    # What the handler reported doing, e.g. {"already_completed": true} (webapp/domain/results.py
    # bounds it), written by the UPDATE that records success.
    result: Mapped[dict | None] = mapped_column(JsonDocument)

    succeeded_at: Mapped[datetime | None]
    dead_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(255))
    resolution_note: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    attempt_log: Mapped[list[OperationAttempt]] = relationship(
        back_populates="operation",
        order_by="OperationAttempt.number",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        # Claims and the reconciler's sweep of due work.
        Index("ix_operations_state_next_attempt_at", "state", "next_attempt_at"),
        # Recovery of running operations whose lease expired.
        # Only running operations hold a lease: the index skips every other row.
        Index(
            "ix_operations_state_lease_expires_at",
            "state",
            "lease_expires_at",
            sqlite_where=text("lease_expires_at IS NOT NULL"),
            postgresql_where=text("lease_expires_at IS NOT NULL"),
        ),
        # Dead-letter pages: by kind and date, unresolved first.
        Index("ix_operations_kind_created_at", "kind", "created_at"),
        Index("ix_operations_state_resolved_at_dead_at", "state", "resolved_at", "dead_at"),
        Index("ix_operations_name_state", "name", "state"),
        Index("ix_operations_subject", "subject"),
        # The operations explorer lists newest first within a state or a name (keyset on created_at, id).
        Index("ix_operations_state_created_at_id", "state", "created_at", "id"),
        Index("ix_operations_name_created_at_id", "name", "created_at", "id"),
    )

    @property
    def retry_count(self) -> int:
        """Attempts beyond the first (the seeds' ``retry_count``)."""
        return max(self.attempts - 1, 0)

    @property
    def last_retry_at(self) -> datetime | None:
        """When the latest attempt started (the seeds' ``last_retry_at``)."""
        return self.last_attempt_at

    def __repr__(self) -> str:
        return f"<Operation {self.id} {self.name} {self.state} {self.attempts}/{self.max_attempts}>"


class OperationAttempt(db.Model):
    """One run of an operation's handler: when, how long, and how it ended."""

    __tablename__ = "operation_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    operation_id: Mapped[int] = mapped_column(ForeignKey("operations.id", ondelete="CASCADE"))
    number: Mapped[int]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    # running, succeeded, failed, dead, deferred, crashed, interrupted
    outcome: Mapped[str] = mapped_column(String(20), server_default=text("'running'"))
    error_class: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_stack: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(120))

    operation: Mapped[Operation] = relationship(back_populates="attempt_log")

    __table_args__ = (
        Index("ix_operation_attempts_operation_id_number", "operation_id", "number"),
        Index("ix_operation_attempts_started_at", "started_at"),
    )


class OperationPause(db.Model):
    """An operation name whose processing is on hold: its operations are stored and wait."""

    __tablename__ = "operation_pauses"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)
