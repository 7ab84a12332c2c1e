"""A size limit on every request, enforced before the body is read.

The storefront API (``API_MAX_BYTES``) and the Stripe webhook (``WEBHOOK_MAX_BYTES``) read
their bodies themselves with their own limits and answers. Every other route — the admin
pages (log-in included), the admin API, health and metrics — is held to
``REQUEST_MAX_BYTES``: a larger ``Content-Length`` is answered 413 at once, before anything
reads (or spools to disk) a byte of the body, and a body without a length (chunked) is cut
off at the limit as it is read.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

# Paths whose views enforce their own limit on the raw body.
OWN_LIMIT_PREFIXES = ("/webhooks/",)
STOREFRONT_PREFIX, ADMIN_API_PREFIX = "/api/", "/api/admin/"


def install(app: Flask) -> None:
    """Check every request's size first (register before the blueprints' own hooks)."""
    app.before_request(limit_request_size)
    app.after_request(close_after_413)


def _has_own_limit(path: str) -> bool:
    if path.startswith(OWN_LIMIT_PREFIXES):
        return True
    return path.startswith(STOREFRONT_PREFIX) and not path.startswith(ADMIN_API_PREFIX)


def limit_request_size() -> None:
    """413 for an announced body over the limit; otherwise cap what may be read of this one."""
    if _has_own_limit(request.path):
        return
    limit = current_app.config["REQUEST_MAX_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge(f"the request body is larger than {limit} bytes")
    request.max_content_length = limit


def close_after_413(response: Response) -> Response:
    """The rest of an oversized body is never read: close rather than reuse the connection."""
    if response.status_code == 413:
        response.headers["Connection"] = "close"
    return response
