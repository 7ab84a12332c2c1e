"""``Idempotency-Key`` for API POSTs: the first answer is stored and replayed for repeats.

A key is reserved (a row with no response yet) before the request runs, so two concurrent
requests with one key cannot both run: the second is told the first is still in progress.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import IdempotencyRecord

MAX_KEY_LENGTH = 255


class IdempotencyError(Exception):
    """The key cannot be used for this request; ``code`` and ``status`` say how to answer."""

    def __init__(self, code: str, status: int, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


@dataclass(frozen=True)
class Reservation:
    """Either a fresh reservation (``record_id``) or a stored answer to replay."""

    record_id: int | None = None
    replay_status: int | None = None
    replay_body: dict | None = None

    @property
    def is_replay(self) -> bool:
        """True when the first request's answer should be returned as is."""
        return self.replay_status is not None


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 over method, path and body: what "the same request" means."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), b"\n", path.encode(), b"\n", body):
        digest.update(part)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """A usable key (printable, at most 255 characters), or IdempotencyError 400."""
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise IdempotencyError(
            "invalid_idempotency_key", 400, f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters"
        )
    return key


def reserve(token_id: int, key: str, request_fingerprint: str, *, now: datetime | None = None) -> Reservation:
    """Reserve ``key`` for this token, or return the stored answer; commits.

    The same key with another request is refused (422); a request still running with the
    key is refused (409) so the client retries later.
    """
    now = now or utcnow()
    for _ in range(2):
        try:
            record = IdempotencyRecord(
                token_id=token_id, key=key, request_fingerprint=request_fingerprint, created_at=now
            )
            db.session.add(record)
            db.session.commit()
            return Reservation(record_id=record.id)
        except IntegrityError:
            db.session.rollback()
        existing = db.session.execute(
            select(IdempotencyRecord).where(IdempotencyRecord.token_id == token_id, IdempotencyRecord.key == key)
        ).scalar_one_or_none()
        if existing is None:
            db.session.rollback()
            continue
        db.session.expunge(existing)
        db.session.rollback()
        if existing.request_fingerprint != request_fingerprint:
            raise IdempotencyError(
                "idempotency_key_reused", 422, "this Idempotency-Key was used with a different request"
            )
        if existing.response_status is not None:
            return Reservation(replay_status=existing.response_status, replay_body=existing.response_body)
        if now - existing.created_at < _abandoned_after() or not _take_over(existing.id, existing.created_at, now):
            raise IdempotencyError(
                "idempotency_key_in_progress", 409, "a request with this Idempotency-Key is still being processed"
            )
        return Reservation(record_id=existing.id)
    raise IdempotencyError(
        "idempotency_key_in_progress", 409, "a request with this Idempotency-Key is still being processed"
    )


def _abandoned_after() -> timedelta:
    """How old an unanswered reservation must be to belong to a request that died mid-way
    (``IDEMPOTENCY_ABANDONED_AFTER_SECONDS``)."""
    return timedelta(seconds=current_app.config["IDEMPOTENCY_ABANDONED_AFTER_SECONDS"])


def _take_over(record_id: int, seen_created_at: datetime, now: datetime) -> bool:
    changed = db.session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.id == record_id,
            IdempotencyRecord.created_at == seen_created_at,
            IdempotencyRecord.response_status.is_(None),
        )
        .values(created_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return bool(changed)


def store(record_id: int, status: int, body: dict) -> None:
    """Save the answer given for a reserved key; commits."""
    db.session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .values(response_status=status, response_body=body)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def release(record_id: int) -> None:
    """Forget a reservation whose request changed nothing, so the key can be used again; commits."""
    db.session.rollback()
    db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
    db.session.commit()


def purge_older_than(cutoff: datetime) -> int:
    """Delete stored answers created before ``cutoff`` (housekeeping); commits; returns how many."""
    deleted = db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)).rowcount
    db.session.commit()
    return deleted
