"""Periodic jobs: a database lease so one runs at a time, and a heartbeat to prove it runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.extensions import db
from webapp.models.types import BigId


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
