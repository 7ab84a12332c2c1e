"""What every JSON endpoint shares: the error type and shape, bearer tokens, timestamps.

Errors answer ``{"error": <stable code>, "message": <human text>}`` (plus extra keys such as
``fields`` where an endpoint documents them); timestamps are ISO 8601 in UTC ending in ``Z``.
"""

from __future__ import annotations

import json

from flask import Request, Response, jsonify

from webapp.domain.text import LONE_SURROGATE, find_lone_surrogate
from webapp.domain.time import iso

__all__ = [
    "ALL_METHODS",
    "ApiError",
    "BadText",
    "MalformedJson",
    "bearer_challenge",
    "bearer_token",
    "error_body",
    "error_response",
    "iso",
    "parse_json_object",
]

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


class MalformedJson(ValueError):
    """A body that is not a usable JSON object (each API answers it with its own 400 code)."""


class BadText(MalformedJson):
    """A JSON object with a string that is not valid Unicode; ``field`` is its path (``filters.q``)."""

    def __init__(self, field: str):
        super().__init__(f"{field} {LONE_SURROGATE}")
        self.field = field


def parse_json_object(raw: bytes) -> dict:
    """The one JSON body parser of every API: the object in ``raw``, or :class:`MalformedJson`.

    Not UTF-8, not JSON, nested too deeply for the decoder (``RecursionError``) or not an
    object: ``MalformedJson``. A key or string holding a lone surrogate (``"\\ud800"``, which
    JSON allows and UTF-8 cannot encode): :class:`BadText` naming the field.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurd nesting
        raise MalformedJson("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedJson("the body must be a JSON object")
    field = find_lone_surrogate(data)
    if field is not None:
        raise BadText(field)
    return data
