"""Email delivery records: the per-try email log, provider circuit breakers, rate-limit state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.types import BigId


class EmailLog(db.Model):
    """One try of one provider for one email operation (sent, failed, or skipped)."""

    __tablename__ = "email_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    operation_id: Mapped[int] = mapped_column(BigId, ForeignKey("operations.id", ondelete="CASCADE"))
    # No foreign key: purchases belong to the payments area and may be archived separately.
    purchase_id: Mapped[int | None] = mapped_column(BigId)
    attempt: Mapped[int | None]
    to_address: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    # sent, failed, skipped
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_email_log_operation_id", "operation_id"),
        Index("ix_email_log_purchase_id", "purchase_id"),
        Index("ix_email_log_created_at", "created_at"),
    )


class EmailProviderCircuit(db.Model):
    """A provider's circuit breaker, shared by every worker process through the database.

    Closed while ``opened_until`` is NULL; open until ``opened_until``; half-open after it.
    """

    __tablename__ = "email_provider_circuits"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    opened_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmailRateLimit(db.Model):
    """A send scope's rate-limit state: one row per scope, whatever its limit (GCRA).

    ``tat_us`` is the scope's theoretical arrival time in microseconds since the Unix epoch
    (integers, so one portable UPDATE can do the arithmetic): a send is allowed while it is at
    most ``(limit - 1) * interval`` ahead of now, and each allowed send pushes it one interval on.
    """

    __tablename__ = "email_rate_limits"

    # "global", or "to:" + a hash of the lower-cased recipient address (no addresses stored here).
    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    tat_us: Mapped[int] = mapped_column(BigInteger)
