"""Access records: hashed API tokens and the stored answers of Idempotency-Key requests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models.types import BigId, JsonDocument

TOKEN_SCOPES = ("storefront", "admin")


class ApiToken(db.Model):
    """A bearer token for the storefront or admin API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    scope: Mapped[str] = mapped_column(String(20))  # storefront | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, so an operator can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    @property
    def active(self) -> bool:
        """A token works until it is revoked."""
        return self.revoked_at is None

    def __repr__(self) -> str:
        return f"<ApiToken {self.id} {self.scope} {self.prefix}…>"


class IdempotencyRecord(db.Model):
    """The first answer to a POST carrying an ``Idempotency-Key``, replayed for repeats."""

    __tablename__ = "api_idempotency_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of method, path and body: the same key with another request is refused.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None]
    response_body: Mapped[dict | None] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("token_id", "key", name="uq_api_idempotency_keys_token_id_key"),
        Index("ix_api_idempotency_keys_created_at", "created_at"),
    )
