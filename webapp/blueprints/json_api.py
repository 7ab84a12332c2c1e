"""What every JSON endpoint shares: the error type and shape, bearer tokens, timestamps.

Errors answer ``{"error": <stable code>, "message": <human text>}`` (plus extra keys such as
``fields`` where an endpoint documents them); timestamps are ISO 8601 in UTC ending in ``Z``.
"""

from __future__ import annotations

from flask import Request, Response, jsonify

from webapp.domain.time import iso

__all__ = ["ALL_METHODS", "ApiError", "bearer_challenge", "bearer_token", "error_body", "error_response", "iso"]

# Routes that take every method answer a wrong one themselves, so that 405s stay JSON.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ApiError(Exception):
    """An answer other than success: status, stable code, message and optional extra keys."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> Response:
        """This error in the one JSON shape."""
        return error_response(self.status, self.code, self.message, **self.extra)


def error_body(code: str, message: str, **extra) -> dict:
    """The one JSON error shape, as a dict (for answers that are stored, such as idempotent replays)."""
    return {"error": code, "message": message, **extra}


def error_response(status: int, code: str, message: str, **extra) -> Response:
    """The one JSON error shape, as a response with ``status``."""
    response = jsonify(error_body(code, message, **extra))
    response.status_code = status
    return response


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (any case of "Bearer"), else None."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip()
    return raw if scheme.lower() == "bearer" and raw else None


def bearer_challenge(realm: str) -> str:
    """The ``WWW-Authenticate`` value a 401 answers with."""
    return f'Bearer realm="{realm}"'
