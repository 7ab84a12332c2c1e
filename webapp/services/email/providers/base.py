"""What every email provider shares: the message it is given, its result, and its error classes.

Error classes (how failover and the engine treat them):

- :class:`TransientProviderError` — network errors, timeouts, HTTP 408/429/5xx, SMTP 4xx.
  The next provider is tried; if every provider fails this way the attempt fails and is
  retried with backoff (or deferred, when every provider answered with ``Retry-After``).
- :class:`ProviderMisconfigured` — the provider refuses *us* (HTTP 401/403, SMTP auth or
  sender refused). Nothing we send will get through it, but another provider may work, so it
  is treated like a transient failure (fail over, counts against the circuit).
- :class:`RejectedError` — the provider refuses *this message* (other 4xx, SMTP 5xx, invalid
  address). Another provider would refuse it too, so failover stops and the operation is
  dead-lettered with the provider's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from webapp.domain.time import as_naive_utc

# A provider asking us to wait longer than this is treated as down, not as "wait".
MAX_RETRY_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class OutgoingEmail:
    """A rendered email ready for any provider; keys derive from the operation, never the attempt."""

    sender: str
    to: str
    subject: str
    text: str
    html: str
    message_id: str  # RFC 5322 Message-ID, with angle brackets
    idempotency_key: str  # sent as Idempotency-Key / metadata
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """A provider accepted the message."""

    provider: str
    message_id: str | None


class ProviderError(Exception):
    """A provider did not accept the message."""

    def __init__(self, provider: str, detail: str, *, retry_after: datetime | None = None, status: int | None = None):
        super().__init__(f"{provider}: {detail}")
        self.provider = provider
        self.detail = detail
        self.retry_after = retry_after
        self.status = status


class TransientProviderError(ProviderError):
    """The provider may accept the message later (or another provider may now)."""


class ProviderMisconfigured(TransientProviderError):
    """The provider refuses our credentials or sender: fail over, and fix the configuration."""


class RejectedError(ProviderError):
    """The provider refuses this message for good; no other provider would take it either."""


class NotConfigured(Exception):
    """A provider named in EMAIL_PROVIDERS lacks its settings (API key, URL)."""


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """``Retry-After`` (seconds or an HTTP date) as a naive-UTC time, or None if absent/unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = as_naive_utc(parsedate_to_datetime(value))
        except (TypeError, ValueError, IndexError):
            return None
    else:
        if seconds < 0:
            return None
        when = now + timedelta(seconds=seconds)
    when = max(when, now)
    return when if when - now <= MAX_RETRY_AFTER else None


def classify_http(provider: str, status: int, detail: str, retry_after: datetime | None) -> ProviderError:
    """The error for a non-2xx HTTP answer: 408/429/5xx transient, 401/403 ours, other 4xx the message's."""
    if status in (408, 429) or status >= 500:
        return TransientProviderError(provider, f"HTTP {status}: {detail}", retry_after=retry_after, status=status)
    if status in (401, 403):
        return ProviderMisconfigured(provider, f"HTTP {status} (credentials refused): {detail}", status=status)
    return RejectedError(provider, f"HTTP {status}: {detail}", status=status)
