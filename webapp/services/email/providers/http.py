"""The HTTP plumbing shared by the Resend and Postmark providers (``requests`` with timeouts)."""

from __future__ import annotations

from datetime import datetime

import requests

from webapp.services.email.providers.base import TransientProviderError, classify_http, parse_retry_after

MAX_DETAIL = 300


def post_json(provider: str, url: str, body: dict, headers: dict, timeout: float, now: datetime) -> requests.Response:
    """POST ``body``; return a 2xx response or raise the provider error it amounts to."""
    try:
        response = requests.post(url, json=body, headers=headers, timeout=(timeout, timeout), allow_redirects=False)
    except requests.Timeout as exc:
        raise TransientProviderError(provider, f"timed out after {timeout:g}s") from exc
    except requests.RequestException as exc:
        raise TransientProviderError(provider, f"network error: {type(exc).__name__}") from exc
    if 200 <= response.status_code < 300:
        return response
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    raise classify_http(provider, response.status_code, error_detail(response), retry_after)


def error_detail(response: requests.Response) -> str:
    """A short, log-safe description of an error answer (the provider's message, not our request)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:MAX_DETAIL]
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("name", "ErrorCode", "message", "Message") if key in body]
        if parts:
            return " ".join(parts)[:MAX_DETAIL]
    return str(body)[:MAX_DETAIL]


def json_field(response: requests.Response, name: str) -> str | None:
    """A string field of a JSON answer, or None when the body is not what we expect."""
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get(name) if isinstance(body, dict) else None
    return str(value) if value is not None else None
