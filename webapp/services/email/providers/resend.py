"""Resend over its HTTP API: ``POST {RESEND_API_BASE}/emails`` with a Bearer key.

Resend de-duplicates on the ``Idempotency-Key`` header for 24 hours, so a retry of the same
operation (same key) after a timeout cannot send twice.
"""

from __future__ import annotations

from datetime import datetime

from webapp.services.email.providers.base import (
    NotConfigured,
    OutgoingEmail,
    RejectedError,
    SendResult,
    TransientProviderError,
)
from webapp.services.email.providers.http import json_field, post_json


class ResendProvider:
    """Sends through Resend."""

    name = "resend"

    def __init__(self, api_key: str | None, api_base: str, timeout: float):
        if not api_key:
            raise NotConfigured("RESEND_API_KEY is not set")
        self.api_key = api_key
        self.url = api_base.rstrip("/") + "/emails"
        self.timeout = timeout

    def send(self, email: OutgoingEmail, now: datetime) -> SendResult:
        """Send one email; raises a ProviderError subclass on failure."""
        body = {
            "from": email.sender,
            "to": [email.to],
            "subject": email.subject,
            "text": email.text,
            "html": email.html,
            "tags": [{"name": key, "value": str(value)} for key, value in email.metadata.items()],
        }
        headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": email.idempotency_key}
        try:
            response = post_json(self.name, self.url, body, headers, self.timeout, now)
        except RejectedError as exc:
            # 409 "concurrent_idempotent_requests": the same key is still in flight at Resend.
            if exc.status == 409 and "concurrent" in exc.detail:
                raise TransientProviderError(self.name, exc.detail, status=409) from exc
            raise
        return SendResult(self.name, json_field(response, "id"))
