"""Postmark over its HTTP API: ``POST {POSTMARK_API_BASE}/email`` with ``X-Postmark-Server-Token``.

Postmark has no idempotency header. We send our stable ``Message-ID`` (derived from the
operation's idempotency key) as a header and the key itself as Metadata, so a duplicate can be
recognised in Postmark's activity feed, and we never call Postmark again for an operation whose
email log already has a ``sent`` row. The remaining window — Postmark accepted the message but
the answer never reached us (a timeout) — can produce one duplicate; that is documented, not hidden.
"""

from __future__ import annotations

from datetime import datetime

from webapp.services.email.providers.base import NotConfigured, OutgoingEmail, RejectedError, SendResult
from webapp.services.email.providers.http import json_field, post_json

# Postmark ErrorCodes (returned with HTTP 422) that mean "this message, never": 300 invalid
# request, 406 inactive recipient. Other codes fall back to the HTTP status classification.


class PostmarkProvider:
    """Sends through Postmark."""

    name = "postmark"

    def __init__(self, server_token: str | None, api_base: str, timeout: float):
        if not server_token:
            raise NotConfigured("POSTMARK_SERVER_TOKEN is not set")
        self.server_token = server_token
        self.url = api_base.rstrip("/") + "/email"
        self.timeout = timeout

    def send(self, email: OutgoingEmail, now: datetime) -> SendResult:
        """Send one email; raises a ProviderError subclass on failure."""
        body = {
            "From": email.sender,
            "To": email.to,
            "Subject": email.subject,
            "TextBody": email.text,
            "HtmlBody": email.html,
            "MessageStream": "outbound",
            "Headers": [{"Name": "Message-ID", "Value": email.message_id}],
            "Metadata": {
                "idempotency_key": email.idempotency_key,
                **{key: str(value) for key, value in email.metadata.items()},
            },
        }
        headers = {"Accept": "application/json", "X-Postmark-Server-Token": self.server_token}
        response = post_json(self.name, self.url, body, headers, self.timeout, now)
        # Postmark answers 200 with a non-zero ErrorCode for some refusals.
        code = json_field(response, "ErrorCode")
        if code not in (None, "0"):
            raise RejectedError(self.name, f"ErrorCode {code}: {json_field(response, 'Message') or ''}".strip())
        return SendResult(self.name, json_field(response, "MessageID"))
