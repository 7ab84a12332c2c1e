"""The api blueprint object, its hooks and error handlers (route modules import ``bp`` from here)."""

from __future__ import annotations

import logging

from flask import Blueprint, g
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from webapp.blueprints.json_api import ApiError, bearer_challenge, error_response
from webapp.extensions import db
from webapp.services.access import idempotency
from webapp.services.payments.errors import (
    CheckoutFailed,
    Conflict,
    NotFound,
    PaymentsError,
    PaymentsUnavailable,
    ValidationFailed,
)

log = logging.getLogger("backstop.api")

bp = Blueprint("api", __name__)

REALM = "storefront"


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    response = exc.response()
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = bearer_challenge(REALM)
    if exc.status == 405:
        response.headers["Allow"] = g.get("allow", "")
    return response


@bp.errorhandler(PaymentsError)
def _payments_error(exc: PaymentsError):
    db.session.rollback()
    if isinstance(exc, ValidationFailed):
        return error_response(422, "validation_failed", "the request has invalid fields", fields=exc.fields)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", exc.message)
    if isinstance(exc, Conflict):
        return error_response(409, exc.code, exc.message)
    if isinstance(exc, PaymentsUnavailable):
        return error_response(503, exc.code, exc.message)
    if isinstance(exc, CheckoutFailed):
        return error_response(502, exc.code, exc.message, purchase_id=exc.purchase_id)
    return error_response(400, exc.code, exc.message)


@bp.errorhandler(idempotency.IdempotencyError)
def _idempotency_error(exc: idempotency.IdempotencyError):
    return error_response(exc.status, exc.code, exc.message)


@bp.errorhandler(SQLAlchemyError)
def _database_error(exc: SQLAlchemyError):
    db.session.rollback()
    log.error("storefront API database error: %s", type(exc).__name__)
    response = error_response(503, "database_unavailable", "the database is unavailable; retry later")
    response.headers["Retry-After"] = "5"
    return response


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    # Still JSON and still the stable shape; the details go to the log, never to the client.
    db.session.rollback()
    if isinstance(exc, HTTPException) and exc.code:
        return error_response(
            exc.code, (exc.name or "http_error").lower().replace(" ", "_"), exc.description or exc.name
        )
    log.exception("unexpected storefront API error")
    return error_response(500, "internal_error", "unexpected error; it has been logged")
