"""Admin accounts: creating them, checking passwords, and throttling repeated failures.

Failures are counted per (email, client address) in the database, so every web process
sees the same count: after ``max_failures`` in a row the pair is locked for ``lock_minutes``.
A successful log-in clears the pair's count. Unknown emails are counted too (no user
enumeration). Each address also has a budget of ``max_address_failures`` per lock window
whatever the emails, so guessing with a new email each time is throttled as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminUser, FailedLogin, FailedLoginAddress
from webapp.services.console import audit, sessions

MIN_PASSWORD_LENGTH = 10
# A hash to check against when the email is unknown, so both paths cost the same time. Written
# out rather than made at import (an scrypt costs ~0.1 s of CPU in every process that starts);
# a test keeps its method and parameters those of generate_password_hash.
DUMMY_HASH = (
    "scrypt:32768:8:1$8R67u65C4gXGXohQ$b5ffbb1364b466c43b9043c7164ac8679c549de8dc7f351e3e8565f279abb89e"
    "c63b03cd4a49fb8e89fdcc99113e56322b7e90627deb277aa42a9675dff9d56a"
)


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


def create_admin(
    email: str, password: str, now: datetime | None = None, *, by: str | None = None, address: str | None = None
) -> AdminUser:
    """Create an active admin with a hashed password, recorded in the audit log as done ``by``. Commits."""
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
        db.session.flush()
        audit.record(
            "admin.create",
            actor=by,
            target_type="admin",
            target_id=str(user.id),
            address=address,
            details={"email": email},
        )
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AdminError(f"an admin with email {email} already exists") from None
    return user


def set_password(
    email: str, password: str, now: datetime | None = None, *, by: str | None = None
) -> tuple[AdminUser, int]:
    """Give an admin a new password and end every session they have open; returns (admin, sessions ended)."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AdminError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    email = normalise_email(email)
    password_hash = generate_password_hash(password)  # the slow hash before any transaction begins
    user = db.session.execute(select(AdminUser).where(AdminUser.email == email)).scalar_one_or_none()
    if user is None:
        db.session.rollback()
        raise AdminError(f"no admin with email {email}")
    user.password_hash = password_hash
    audit.record("admin.set_password", actor=by, target_type="admin", target_id=str(user.id), details={"email": email})
    db.session.commit()
    return user, sessions.revoke_all(user.id, now=now)


def load_admin(user_id: str) -> AdminUser | None:
    """The active admin with this id (Flask-Login's user loader), else None."""
    try:
        user = db.session.get(AdminUser, int(user_id))
    except (TypeError, ValueError):
        return None
    return user if user is not None and user.active else None


def log_in(
    email: str,
    password: str,
    ip: str,
    *,
    max_failures: int = 5,
    max_address_failures: int = 20,
    lock_minutes: int = 15,
    now: datetime | None = None,
) -> LoginResult:
    """Check a log-in, throttled per (email, ip) and per ip. Commits.

    The slow password hash runs between two short transactions, never inside one: on SQLite
    every transaction holds the write lock, and a hash inside it would stall every writer.
    """
    now = now or utcnow()
    email = normalise_email(email)[:255]
    ip = (ip or "unknown")[:64]
    locked_until = _lock_in_force(email, ip, now)
    user = db.session.execute(select(AdminUser).where(AdminUser.email == email)).scalar_one_or_none()
    user_id, stored_hash = (user.id, user.password_hash) if user is not None else (None, DUMMY_HASH)
    active = user is not None and user.active
    db.session.rollback()
    if locked_until is not None:
        return LoginResult(None, lock_message(locked_until, now), locked_until)
    valid = check_password_hash(stored_hash, password or "")
    if valid and active:
        return _succeed(user_id, email, ip, now)
    return _fail(email, ip, max_failures, max_address_failures, lock_minutes, now)


def _lock_in_force(email: str, ip: str, now: datetime) -> datetime | None:
    """The later of the (email, ip) and the ip lock still running at ``now``, else None."""
    until = [
        db.session.execute(
            select(FailedLogin.locked_until).where(FailedLogin.email == email, FailedLogin.ip == ip)
        ).scalar_one_or_none(),
        db.session.execute(
            select(FailedLoginAddress.locked_until).where(FailedLoginAddress.ip == ip)
        ).scalar_one_or_none(),
    ]
    running = [moment for moment in until if moment is not None and moment > now]
    return max(running, default=None)


def _succeed(user_id: int, email: str, ip: str, now: datetime) -> LoginResult:
    """Right password: log in, unless a lock landed (or the admin was deactivated) meanwhile."""
    locked_until = _lock_in_force(email, ip, now)
    user = db.session.get(AdminUser, user_id)
    if locked_until is not None or user is None or not user.active:
        db.session.rollback()
        if locked_until is not None:
            return LoginResult(None, lock_message(locked_until, now), locked_until)
        return LoginResult(None, "Wrong email or password.")
    db.session.execute(delete(FailedLogin).where(FailedLogin.email == email, FailedLogin.ip == ip))
    user.last_login_at = now
    audit.record("login", actor=email, target_type="admin", target_id=str(user_id), address=ip)
    db.session.commit()
    return LoginResult(user)


def _fail(email, ip, max_failures, max_address_failures, lock_minutes, now) -> LoginResult:
    """Count a failure against the (email, ip) pair and against the ip; a limit reached locks it."""
    pair = db.session.execute(
        select(FailedLogin).where(FailedLogin.email == email, FailedLogin.ip == ip)
    ).scalar_one_or_none()
    if pair is None:
        pair = FailedLogin(email=email, ip=ip, failures=0, first_failed_at=now, last_failed_at=now)
        db.session.add(pair)
    address = db.session.execute(select(FailedLoginAddress).where(FailedLoginAddress.ip == ip)).scalar_one_or_none()
    if address is None:
        address = FailedLoginAddress(ip=ip, failures=0, first_failed_at=now, last_failed_at=now)
        db.session.add(address)
    window = timedelta(minutes=lock_minutes)
    _count_failure(pair, max_failures, window, now, expires=False)
    # The address limit is a rate: failures count within one lock window, whatever happens between.
    _count_failure(address, max_address_failures, window, now, expires=True)
    locked_until = max((m for m in (pair.locked_until, address.locked_until) if m is not None), default=None)
    # The email as typed (it may name no admin). Refusals while a lock runs write nothing,
    # so a flood of attempts cannot fill the log.
    audit.record(
        "login.failed",
        actor=email or None,
        address=ip,
        details={"locked_until": locked_until} if locked_until is not None and locked_until > now else None,
    )
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent first failure created a row: count on it next time
        db.session.rollback()
        return LoginResult(None, "Wrong email or password.")
    if locked_until is not None and locked_until > now:
        return LoginResult(None, lock_message(locked_until, now), locked_until)
    return LoginResult(None, "Wrong email or password.")


def _count_failure(record, max_failures: int, window: timedelta, now: datetime, *, expires: bool) -> None:
    """One more failure on ``record``; restart the count after a lock (or, with ``expires``, a window) ran out."""
    lock_over = record.locked_until is not None and record.locked_until <= now
    if lock_over or (expires and record.locked_until is None and record.first_failed_at <= now - window):
        record.failures, record.locked_until, record.first_failed_at = 0, None, now
    record.failures = (record.failures or 0) + 1
    record.last_failed_at = now
    if max_failures and record.failures >= max_failures:
        record.locked_until = now + window


def lock_message(until: datetime, now: datetime) -> str:
    """What a locked-out admin reads: the minutes left, rounded up (a full 15-minute lock says 15)."""
    minutes = max(1, math.ceil((until - now).total_seconds() / 60))
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
