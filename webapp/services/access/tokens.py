"""Bearer tokens for the storefront and admin APIs: shown once, stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import ApiToken
from webapp.models.access import TOKEN_SCOPES

# A recognisable prefix per scope helps secret scanners and people tell tokens apart.
TOKEN_PREFIXES = {"storefront": "bst_sf_", "admin": "bst_ad_"}
PREFIX_SHOWN = 12
# last_used_at is a hint for operators, so it is written at most once a minute per token.
LAST_USED_RESOLUTION_SECONDS = 60


class TokenError(ValueError):
    """A token command was given something it cannot act on."""


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: the row, and the raw secret shown exactly once."""

    token: ApiToken
    raw: str


def hash_token(raw: str) -> str:
    """SHA-256 hex digest of a raw token (what the database stores)."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create_token(
    name: str, scope: str, *, now: datetime | None = None, before_commit: Callable[[ApiToken], None] | None = None
) -> IssuedToken:
    """Create and commit a token; the raw value is returned once and never stored.

    ``before_commit(token)`` runs with the new row's id known and the transaction still open
    (the CLI records it in the audit log, so the token and its audit row commit together).
    """
    if scope not in TOKEN_SCOPES:
        raise TokenError(f"unknown scope {scope!r}; expected one of {', '.join(TOKEN_SCOPES)}")
    name = (name or "").strip()
    if not name:
        raise TokenError("a token needs a name")
    raw = TOKEN_PREFIXES[scope] + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name[:120], scope=scope, token_hash=hash_token(raw), prefix=raw[:PREFIX_SHOWN], created_at=now or utcnow()
    )
    db.session.add(token)
    if before_commit is not None:
        db.session.flush()
        before_commit(token)
    db.session.commit()
    return IssuedToken(token, raw)


def list_tokens() -> list[ApiToken]:
    """Every token, newest first (revoked ones included)."""
    tokens = list(db.session.execute(select(ApiToken).order_by(ApiToken.id.desc())).scalars())
    _end_read(*tokens)
    return tokens


def revoke_token(token_id: int, *, now: datetime | None = None) -> ApiToken:
    """Revoke a token (idempotent); it stops working at once."""
    token = db.session.get(ApiToken, token_id)
    if token is None:
        db.session.rollback()
        raise TokenError(f"token {token_id} does not exist")
    if token.revoked_at is None:
        token.revoked_at = now or utcnow()
    db.session.commit()
    return token


def authenticate(raw_token: str | None, scope: str, *, now: datetime | None = None) -> ApiToken | None:
    """The active token with this raw value and scope, or None.

    The lookup is by hash, so timing reveals nothing about stored tokens. Commits (it may
    record ``last_used_at``) and returns a detached-safe row.
    """
    if not raw_token or scope not in TOKEN_SCOPES:
        return None
    now = now or utcnow()
    token = db.session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(raw_token))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None or token.scope != scope:
        _end_read()
        return None
    last = token.last_used_at
    if last is None or (now - last).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
        db.session.execute(
            update(ApiToken)
            .where(ApiToken.id == token.id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.expunge(token)
        token.last_used_at = now
        db.session.commit()
        return token
    _end_read(token)
    return token


def _end_read(*rows) -> None:
    # Detach before rolling back: a rollback expires loaded rows, and touching an expired
    # row would silently open a new (on SQLite, write-locking) transaction.
    for row in rows:
        db.session.expunge(row)
    db.session.rollback()
