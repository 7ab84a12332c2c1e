"""Time in one convention: naive datetimes in UTC, which SQLite and PostgreSQL store alike."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time as a naive UTC datetime."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_naive_utc(value: datetime) -> datetime:
    """Convert an aware datetime to naive UTC; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC ending in ``Z`` (``None`` stays ``None``): the one way timestamps leave as JSON."""
    if value is None:
        return None
    return as_naive_utc(value).isoformat() + "Z"
