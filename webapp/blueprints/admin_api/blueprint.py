"""The admin_api blueprint object, its hooks and error handlers (route modules import ``bp`` from here)."""

from __future__ import annotations

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import HTTPException

from webapp.blueprints.json_api import ApiError, bearer_challenge, bearer_token, error_response
from webapp.services.access import tokens
from webapp.services.engine.operations import InvalidNote

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")

REALM = "backstop-admin"
SCOPE = "admin"
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
}


def _error(status: int, code: str, message: str, **extra):
    """The shared error shape, with this API's bearer challenge on a 401."""
    response = error_response(status, code, message, **extra)
    if status == 401:
        response.headers["WWW-Authenticate"] = bearer_challenge(REALM)
    return response


@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    return _error(error.status, error.code, error.message, **error.extra)


@bp.errorhandler(InvalidNote)
def _note_too_long(error: InvalidNote):
    return _error(400, "invalid_note", str(error))


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    return _error(error.code or 400, ERROR_CODES.get(error.code, "http_error"), error.description)


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _routing_error(error: HTTPException):
    """Unknown paths and methods under /api/admin answer in this API's shape too."""
    if request.path.startswith(bp.url_prefix + "/"):
        return _error(error.code, ERROR_CODES[error.code], error.description)
    return error


@bp.errorhandler(Exception)
def _unexpected(error: Exception):
    # A bug must still answer in the API's shape, without details that could leak data.
    current_app.logger.exception("admin API failed on %s %s", request.method, request.path)
    return _error(500, "internal_error", "the server failed to answer; the error is logged")


@bp.before_request
def _authenticate():
    """Every request needs ``Authorization: Bearer <admin token>``."""
    raw = bearer_token(request)
    if raw is None:
        raise ApiError(401, "unauthorized", "send an admin API token as 'Authorization: Bearer <token>'")
    token = tokens.authenticate(raw, SCOPE)
    if token is None:
        raise ApiError(401, "unauthorized", "the token is unknown, revoked, or not an admin token")
    g.api_token = token
