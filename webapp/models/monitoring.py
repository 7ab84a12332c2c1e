"""Monitoring records: alerts and their threshold states, and the metric roll-ups kept when rows are cleaned up."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.types import BigId, JsonDocument

ALERT_LEVELS = ("info", "warning", "error", "critical")


ALERT_TYPES = (
    "email_failure",
    "webhook_failure",
    "dlq_threshold",
    "failure_rate",
    "job_stale",
    "system_health",
    "daily_report",
    "backlog",
    "attempts",
)


class Alert(db.Model):
    """One alert: recorded always, delivered to Slack by its ``alert.slack`` operation."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    level: Mapped[str] = mapped_column(String(10))
    # The dedupe key within a type: an operation name and error fingerprint, a kind, a job.
    key: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text, default="")
    context: Mapped[dict] = mapped_column(JsonDocument, default=dict)
    # Threshold alerts only: firing or recovered.
    state: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The operation that delivers it (kept NULL once cleanup removes that operation).
    operation_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("operations.id", ondelete="SET NULL"))
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_alerts_type_key_created_at", "type", "key", "created_at"),
        Index("ix_alerts_created_at", "created_at"),
        Index("ix_alerts_operation_id", "operation_id"),
    )

    def __repr__(self) -> str:
        return f"<Alert {self.id} {self.type} {self.level} {self.key}>"


class AlertState(db.Model):
    """The last known state of one threshold (type + key), so alerts fire on crossings only."""

    __tablename__ = "alert_states"

    type: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="ok")  # ok | firing
    level: Mapped[str | None] = mapped_column(String(10))
    # Whether this firing episode was announced (a suppressed flap gets no recovery either).
    announced: Mapped[bool] = mapped_column(default=False)
    value: Mapped[float | None] = mapped_column(Float)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricRollup(db.Model):
    """Counts carried over from rows cleanup deleted, so /metrics counters never go down."""

    __tablename__ = "metric_rollups"

    metric: Mapped[str] = mapped_column(String(60), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    # A histogram bucket's upper bound ("0.1", "+Inf"), or "" for plain counters.
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class OperationHourRollup(db.Model):
    """One hour's console counts per operation kind and name, rebuilt by the checks job.

    Three clocks share the row: ``created*`` count operations created in the hour (by their
    current state, for the per-name breakdown); ``succeeded*`` / ``dead*`` count operations
    whose terminal time falls in the hour (the health cards); ``attempts_*`` count attempts
    started in the hour (the trend) and live on the ``("*", "*")`` row. ``computed_at`` says
    how fresh the hour is: a later outcome of an operation created in it shows on the next
    rebuild of that hour.
    """

    __tablename__ = "operation_hour_rollups"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    created: Mapped[int] = mapped_column(BigInteger, default=0)
    created_succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    created_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    created_dead: Mapped[int] = mapped_column(BigInteger, default=0)
    created_attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    succeeded_retried: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum over retried successes of (success - latest (re)queue), seconds: the avg card's numerator.
    retried_success_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    dead: Mapped[int] = mapped_column(BigInteger, default=0)
    dead_retried: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts_succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the attempts of operations that succeeded or died in the hour: the avg-attempts card.
    finished_attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    computed_at: Mapped[datetime]
