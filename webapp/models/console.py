"""The admin console's records: admin users, login throttling, background bulk jobs and the audit log."""

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


class AdminSession(db.Model):
    """One logged-in browser: the cookie holds a random id, only its SHA-256 is stored.

    Revoking the row (logout, a password change) ends the session even for a copy of the
    cookie saved earlier; idle and absolute limits are checked on every request.
    """

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_id: Mapped[int] = mapped_column(BigId, ForeignKey("admin_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


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


class FailedLoginAddress(db.Model):
    """Failed log-ins from one client address, whatever the email: a spray over many emails is throttled too."""

    __tablename__ = "failed_login_addresses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), unique=True)
    failures: Mapped[int] = mapped_column(default=0)
    first_failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]


class BulkJob(db.Model):
    """A background action over a snapshot of operations (retry everything matching a filter)."""

    __tablename__ = "bulk_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    action: Mapped[str] = mapped_column(String(20))  # retry, run_now, reschedule, cancel
    # What the action needs beyond the snapshot: a reschedule's ``run_at`` (ISO, UTC).
    params: Mapped[dict | None] = mapped_column(JsonDocument)
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


class AuditEntry(db.Model):
    """One thing a person (or the CLI) did: who, when, what, to what, why, and from where.

    Append-only: rows are added in the same transaction as the action they describe and no
    code path updates them; only cleanup deletes them, after ``RETENTION_AUDIT_DAYS``.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # An admin's email, ``token:<name>`` for the admin API, ``cli:<user>``; None for the system.
    actor: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(40))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(120))
    note: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict | None] = mapped_column(JsonDocument)

    __table_args__ = (
        # The page lists newest first, keyset-paginated by (created_at, id), optionally filtered.
        Index("ix_audit_log_created_at_id", "created_at", "id"),
        Index("ix_audit_log_action_created_at_id", "action", "created_at", "id"),
        Index("ix_audit_log_actor_created_at_id", "actor", "created_at", "id"),
        # An operation's (or a token's, a bulk job's) own history.
        Index("ix_audit_log_target", "target_type", "target_id", "created_at", "id"),
    )


@event.listens_for(AuditEntry, "before_update")
def _append_only(mapper, connection, entry: AuditEntry) -> None:
    """An audit row is never changed once written: a change through the ORM is a bug, refused loudly."""
    raise ValueError(f"audit entry {entry.id} is append-only and cannot be changed")


class BulkJobItem(db.Model):
    """One operation in a bulk job's snapshot, taken when the admin was shown the count."""

    __tablename__ = "bulk_job_items"

    bulk_job_id: Mapped[int] = mapped_column(BigId, ForeignKey("bulk_jobs.id", ondelete="CASCADE"), primary_key=True)
    operation_id: Mapped[int] = mapped_column(BigId, primary_key=True)


# Indexes the admin pages need on the engine's table, declared here so they live with the
# queries that use them (and in this area's migration): the dead-letter list by date for
# every kind, and the health page's windowed counts by terminal time (attempts included, so
# the retried-operation counts are answered from the index alone). The terminal-time ones are
# partial (only rows that reached that end): the engine's every claim and outcome would
# otherwise rewrite their entries. Both planners prove ``x >= ?`` implies ``x IS NOT NULL``.
Index("ix_operations_state_dead_at_id", Operation.state, Operation.dead_at, Operation.id)
DEAD_AT_SET = text("dead_at IS NOT NULL")
SUCCEEDED_AT_SET = text("succeeded_at IS NOT NULL")
Index(
    "ix_operations_kind_dead_at_attempts",
    Operation.kind,
    Operation.dead_at,
    Operation.attempts,
    sqlite_where=DEAD_AT_SET,
    postgresql_where=DEAD_AT_SET,
)
Index(
    "ix_operations_kind_succeeded_at_attempts",
    Operation.kind,
    Operation.succeeded_at,
    Operation.attempts,
    sqlite_where=SUCCEEDED_AT_SET,
    postgresql_where=SUCCEEDED_AT_SET,
)
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

# The Issues view's grouping: every dead row's fingerprint, name, kind, resolution and death in
# group order, so the grouping reads this index alone, without a sort. ``state`` leads although
# it is constant here: SQLite counts an index as covering only if it holds every column the
# query names, and the query names ``state``.
Index(
    "ix_operations_dead_issues",
    Operation.state,
    Operation.error_fingerprint,
    Operation.name,
    Operation.kind,
    Operation.resolved_at,
    Operation.dead_at,
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
