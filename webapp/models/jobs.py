"""Periodic jobs (a database lease so one runs at a time, and a heartbeat to prove it) and consumer heartbeats."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.extensions import db
from webapp.models.types import BigId, JsonDocument


class PeriodicJob(db.Model):
    """Lease and heartbeat of one periodic job (the reconciler, cleanup, ...)."""

    __tablename__ = "periodic_jobs"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    lease_holder: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None]
    interval_seconds: Mapped[float] = mapped_column(default=60.0)
    last_started_at: Mapped[datetime | None]
    # The heartbeat: when a run last finished, whatever its outcome.
    last_finished_at: Mapped[datetime | None]
    last_duration_ms: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_summary: Mapped[str | None] = mapped_column(Text)
    runs: Mapped[int] = mapped_column(default=0)


class JobRun(db.Model):
    """One run of a periodic job: who ran it, when, and how it ended."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_name: Mapped[str] = mapped_column(String(80))
    holder: Mapped[str] = mapped_column(String(120))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(20))
    summary: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_job_runs_job_name_started_at", "job_name", "started_at"),)


class ConsumerBeat(db.Model):
    """One consumer process's heartbeat: who it is, since when, and what it is running now.

    ``identity`` is ``host:pid``, the prefix of the ``host:pid:thread`` worker identity that
    attempts and leases record, so a consumer's running operations are those attempts.
    """

    __tablename__ = "consumers"

    identity: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    threads: Mapped[int]
    # Whether this consumer runs the periodic jobs (None: not known, e.g. a plain huey_consumer).
    scheduler: Mapped[bool | None]
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    # Set when the consumer stopped cleanly; a consumer with neither this nor a recent beat is lost.
    stopped_at: Mapped[datetime | None]
    # [{"operation_id", "name", "attempt", "worker", "started_at"}] at the last beat.
    running: Mapped[list] = mapped_column(JsonDocument, default=list)

    __table_args__ = (Index("ix_consumers_last_seen_at", "last_seen_at"),)
