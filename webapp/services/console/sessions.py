"""Server-side admin sessions: issued at log-in, checked on every request, revoked at logout.

The signed session cookie only carries a random session id; the database holds its SHA-256
with its admin, start and last use. A session ends when it is revoked (logout, a password
change), when it has been idle longer than the idle timeout, or when it is older than the
absolute lifetime — whatever copy of the cookie a browser or a thief still holds.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminSession, AdminUser

# Recording every request's time would be a write per request (and per 10 s poll): a session's
# last use is only moved forward once it is this old, a small fraction of any idle timeout.
TOUCH_EVERY = timedelta(seconds=60)


def token_hash(token: str) -> str:
    """What is stored for a session id: its SHA-256, so a database read reveals no usable cookie."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def start(admin_id: int, now: datetime | None = None) -> str:
    """Open a session for the admin; returns its id for the cookie (never stored as such). Commits."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    db.session.add(AdminSession(token_hash=token_hash(token), admin_id=admin_id, created_at=now, last_seen_at=now))
    db.session.commit()
    return token


def resolve(token: str | None, *, idle: timedelta, lifetime: timedelta, now: datetime | None = None):
    """The active admin of a live session ``token``, else None; moves its last use forward (commits then)."""
    if not token or not isinstance(token, str):
        return None
    now = now or utcnow()
    row = db.session.execute(
        select(AdminSession, AdminUser)
        .join(AdminUser, AdminUser.id == AdminSession.admin_id)
        .where(AdminSession.token_hash == token_hash(token))
    ).one_or_none()
    if row is None:
        db.session.rollback()
        return None
    record, user = row
    live = (
        record.revoked_at is None
        and user.active
        and now < record.created_at + lifetime
        and now < record.last_seen_at + idle
    )
    if not live:
        db.session.rollback()
        return None
    if now - record.last_seen_at >= TOUCH_EVERY:
        record.last_seen_at = now
        db.session.commit()
    return user


def revoke(token: str | None, now: datetime | None = None) -> None:
    """End one session (logout). Commits (whatever else the caller added, such as its audit row)."""
    if not token or not isinstance(token, str):
        db.session.commit()
        return
    db.session.execute(
        update(AdminSession)
        .where(AdminSession.token_hash == token_hash(token), AdminSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    db.session.commit()


def revoke_all(admin_id: int, now: datetime | None = None) -> int:
    """End every open session of one admin (password change); returns how many. Commits."""
    result = db.session.execute(
        update(AdminSession)
        .where(AdminSession.admin_id == admin_id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    db.session.commit()
    return result.rowcount
