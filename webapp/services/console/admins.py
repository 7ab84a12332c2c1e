"""Admin accounts: creating them, checking passwords, and throttling repeated failures.

Failures are counted per (email, client address) in the database, so every web process
sees the same count: after ``max_failures`` in a row the pair is locked for ``lock_minutes``.
A successful log-in clears the count. Unknown emails are counted too (no user enumeration).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminUser, FailedLogin

MIN_PASSWORD_LENGTH = 10
# A hash to check against when the email is unknown, so both paths cost the same time.
_DUMMY_HASH = generate_password_hash("not-a-real-password-just-for-timing")


class AdminError(ValueError):
    """An admin account could not be created (bad email, short password, duplicate)."""


@dataclass
class LoginResult:
    """The outcome of a log-in attempt: a user, or a message safe to show."""

    user: AdminUser | None
    error: str | None = None
    locked_until: datetime | None = None


def normalise_email(email: str) -> str:
    """Lower-cased, trimmed email: the key admins are stored and throttled under."""
    return (email or "").strip().lower()


def create_admin(email: str, password: str, now: datetime | None = None) -> AdminUser:
    """Create an active admin with a hashed password. Commits."""
    email = normalise_email(email)
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AdminError(f"invalid email: {exc}") from None
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AdminError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    user = AdminUser(
        email=email, password_hash=generate_password_hash(password), active=True, created_at=now or utcnow()
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AdminError(f"an admin with email {email} already exists") from None
    return user


def load_admin(user_id: str) -> AdminUser | None:
    """The active admin with this id (Flask-Login's user loader), else None."""
    try:
        user = db.session.get(AdminUser, int(user_id))
    except (TypeError, ValueError):
        return None
    return user if user is not None and user.active else None


def log_in(
    email: str, password: str, ip: str, *, max_failures: int = 5, lock_minutes: int = 15, now: datetime | None = None
) -> LoginResult:
    """Check a log-in, counting failures per (email, ip). Commits."""
    now = now or utcnow()
    email = normalise_email(email)[:255]
    ip = (ip or "unknown")[:64]
    record = db.session.execute(
        select(FailedLogin).where(FailedLogin.email == email, FailedLogin.ip == ip)
    ).scalar_one_or_none()
    if record is not None and record.locked_until is not None and record.locked_until > now:
        db.session.rollback()
        return LoginResult(None, _locked_message(record.locked_until, now), record.locked_until)
    user = db.session.execute(select(AdminUser).where(AdminUser.email == email)).scalar_one_or_none()
    valid = check_password_hash(user.password_hash if user else _DUMMY_HASH, password or "")
    if user is not None and valid and user.active:
        db.session.execute(delete(FailedLogin).where(FailedLogin.email == email, FailedLogin.ip == ip))
        user.last_login_at = now
        db.session.commit()
        return LoginResult(user)
    record = _count_failure(record, email, ip, max_failures, lock_minutes, now)
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent first failure created the row: count on it next time
        db.session.rollback()
        return LoginResult(None, "Wrong email or password.")
    if record.locked_until is not None:
        return LoginResult(None, _locked_message(record.locked_until, now), record.locked_until)
    return LoginResult(None, "Wrong email or password.")


def _count_failure(record, email, ip, max_failures, lock_minutes, now) -> FailedLogin:
    if record is None:
        record = FailedLogin(email=email, ip=ip, failures=0, first_failed_at=now, last_failed_at=now)
        db.session.add(record)
    elif record.locked_until is not None:  # an expired lock: start counting afresh
        record.failures, record.locked_until, record.first_failed_at = 0, None, now
    record.failures += 1
    record.last_failed_at = now
    if record.failures >= max_failures:
        record.locked_until = now + timedelta(minutes=lock_minutes)
    return record


def _locked_message(until: datetime, now: datetime) -> str:
    minutes = max(1, int((until - now).total_seconds() // 60) + 1)
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
