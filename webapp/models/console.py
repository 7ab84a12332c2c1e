"""The admin console's records: admin users, login throttling and background bulk jobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, UniqueConstraint, event, text
from sqlalchemy.orm import Mapped, mapped_column

from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.operations import Operation
from webapp.models.types import BigId, JsonDocument


class AdminUser(db.Model):
    """A person allowed into /admin. Implements the attributes Flask-Login expects."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    # Flask-Login's user protocol, written out so models never import flask_login.
    @property
    def is_active(self) -> bool:
        """Deactivated admins cannot log in, and their open sessions stop working."""
        return bool(self.active)

    @property
    def is_authenticated(self) -> bool:
        """A loaded admin user is always authenticated."""
        return True

    @property
    def is_anonymous(self) -> bool:
        """Never anonymous."""
        return False

    def get_id(self) -> str:
        """The id Flask-Login stores in the session."""
        return str(self.id)

    def __repr__(self) -> str:
        return f"<AdminUser {self.id} {self.email}>"


class FailedLogin(db.Model):
    """Failed log-in attempts for one email from one address, and the lock they caused."""

    __tablename__ = "failed_logins"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    ip: Mapped[str] = mapped_column(String(64))
    failures: Mapped[int] = mapped_column(default=0)
    first_failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("email", "ip", name="uq_failed_logins_email_ip"),)


class BulkJob(db.Model):
    """A background action over a snapshot of operations (retry everything matching a filter)."""

    __tablename__ = "bulk_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    action: Mapped[str] = mapped_column(String(20))  # retry
    # draft (snapshot taken, awaiting confirmation), queued, running, done, cancelled, failed
    state: Mapped[str] = mapped_column(String(20), default="draft")
    filters: Mapped[dict] = mapped_column(JsonDocument, default=dict)
    description: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    # The last snapshot item handled: a re-run after a crash resumes after it.
    cursor: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    operation_id: Mapped[int | None] = mapped_column(BigId)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    @property
    def percent(self) -> int:
        """Progress as a whole percentage."""
        return 100 if not self.total else min(100, int(self.processed * 100 / self.total))

    @property
    def finished(self) -> bool:
        """True once the job will make no more progress."""
        return self.state in ("done", "cancelled", "failed")


class BulkJobItem(db.Model):
    """One operation in a bulk job's snapshot, taken when the admin was shown the count."""

    __tablename__ = "bulk_job_items"

    bulk_job_id: Mapped[int] = mapped_column(BigId, ForeignKey("bulk_jobs.id", ondelete="CASCADE"), primary_key=True)
    operation_id: Mapped[int] = mapped_column(BigId, primary_key=True)


# Indexes the admin pages need on the engine's table, declared here so they live with the
# queries that use them (and in this area's migration): the dead-letter list by date for
# every kind, and the health page's windowed counts by terminal time (attempts included, so
# the retried-operation counts are answered from the index alone).
Index("ix_operations_state_dead_at_id", Operation.state, Operation.dead_at, Operation.id)
Index("ix_operations_kind_dead_at_attempts", Operation.kind, Operation.dead_at, Operation.attempts)
Index("ix_operations_kind_succeeded_at_attempts", Operation.kind, Operation.succeeded_at, Operation.attempts)
# Covering for the per-name breakdown (an index-only scan of the window).
Index(
    "ix_operations_created_at_name",
    Operation.created_at,
    Operation.name,
    Operation.kind,
    Operation.state,
    Operation.attempts,
)

# Partial indexes over dead operations only (a few percent of the table, and untouched by the
# engine's other transitions). The console's queries spell ``state = 'dead'`` as a literal so
# that SQLite's planner can prove they apply. Kind and name filters of the failed-operations
# list walk them in (dead_at, id) order; the Issues view groups by the fingerprint reading
# nothing but the index (it covers every column the grouping reads).
DEAD_ONLY = text("state = 'dead'")
Index(
    "ix_operations_dead_kind_dead_at",
    Operation.kind,
    Operation.dead_at,
    sqlite_where=DEAD_ONLY,
    postgresql_where=DEAD_ONLY,
)
Index(
    "ix_operations_dead_name_dead_at",
    Operation.name,
    Operation.dead_at,
    sqlite_where=DEAD_ONLY,
    postgresql_where=DEAD_ONLY,
)
Index(
    "ix_operations_dead_fingerprint",
    Operation.error_fingerprint,
    Operation.dead_at,
    Operation.resolved_at,
    Operation.name,
    Operation.kind,
    sqlite_where=DEAD_ONLY,
    postgresql_where=DEAD_ONLY,
)


@event.listens_for(Operation, "before_insert")
def _fingerprint_new_rows(mapper, connection, operation: Operation) -> None:
    """Rows inserted with an error already (imports, demo data) get its fingerprint too.

    The engine writes errors with UPDATE statements, and the fingerprint with them
    (``webapp.services.engine.runner.record_failure``).
    """
    if operation.error_fingerprint is None and (operation.error_class or operation.error_message):
        operation.error_fingerprint = fingerprint_of(operation.error_class, operation.error_message)
