"""The storefront API: ``POST /api/customers``, ``POST /api/purchases``, ``GET /api/purchases/<id>``.

Bearer tokens (scope ``storefront``). Every answer is JSON; every error has the shape
``{"error": code, "message": ...}`` (plus ``fields`` for validation failures).
"""

from __future__ import annotations

import json
import logging
from functools import wraps

from flask import Blueprint, current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from webapp.extensions import db
from webapp.services.access import idempotency, tokens
from webapp.services.payments import checkout, customers, purchases
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

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SCOPE = "storefront"


class ApiError(Exception):
    """An answer other than success: status, stable code, message and optional extra keys."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra):
    """The stable JSON error shape."""
    return jsonify({"error": code, "message": message, **extra}), status


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    response, status = error_response(exc.status, exc.code, exc.message, **exc.extra)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="storefront"'
    if status == 405:
        response.headers["Allow"] = g.get("allow", "")
    return response, status


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
    response, status = error_response(503, "database_unavailable", "the database is unavailable; retry later")
    response.headers["Retry-After"] = "5"
    return response, status


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


def require_token(view):
    """Let the request through only with an active storefront bearer token."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <storefront token>")
        token = tokens.authenticate(raw.strip(), SCOPE)
        if token is None:
            raise ApiError(401, "unauthorized", "the bearer token is unknown, revoked or not a storefront token")
        g.api_token = token
        return view(*args, **kwargs)

    return wrapper


def allow(*methods: str):
    """Answer 405 (JSON) for any other method; routes accept every method so 405s stay JSON."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if request.method not in methods:
                g.allow = ", ".join(methods)
                raise ApiError(405, "method_not_allowed", f"use {' or '.join(methods)}")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def json_body() -> tuple[dict, bytes]:
    """The request's JSON object and raw bytes; 413, 415 or 400 otherwise."""
    limit = int(current_app.config.get("API_MAX_BYTES") or 64 * 1024)
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurd nesting
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return data, raw


@bp.route("/api/customers", methods=ALL_METHODS)
@allow("POST")
@require_token
def create_customer():
    """Create a customer (201) and queue their welcome email in the same transaction."""
    data, raw = json_body()
    return answer_once(raw, lambda: _customer(data))


def _customer(data: dict) -> tuple[int, dict]:
    customer = customers.create_customer(data)
    return 201, {
        "id": customer.id,
        "email": customer.email,
        "name": customer.name,
        "credit_balance_cents": customer.credit_balance_cents,
        "created_at": customer.created_at.isoformat() + "Z",
    }


@bp.route("/api/purchases", methods=ALL_METHODS)
@allow("POST")
@require_token
def create_purchase():
    """Buy a product with credits (completed at once) or by card (answers a checkout_url)."""
    data, raw = json_body()
    return answer_once(raw, lambda: _purchase(data, _request_key()))


def answer_once(raw: bytes, run):
    """Answer ``run()`` (→ status, body); with an ``Idempotency-Key``, only once per key.

    A repeat of the same request gets the first answer back (``Idempotent-Replayed: true``);
    the key with another body is 422; while the first is still running, 409.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, body = _run_recorded(run)
        return jsonify(body), status
    fingerprint = idempotency.fingerprint(request.method, request.path, raw)
    reservation = idempotency.reserve(g.api_token.id, idempotency.check_key(key), fingerprint)
    if reservation.is_replay:
        response = jsonify(reservation.replay_body)
        response.headers["Idempotent-Replayed"] = "true"
        return response, reservation.replay_status
    try:
        status, body = _run_recorded(run)
    except Exception:
        # Nothing was written (validation, conflict, outage): the key may be used again.
        idempotency.release(reservation.record_id)
        raise
    idempotency.store(reservation.record_id, status, body)
    return jsonify(body), status


def _run_recorded(run) -> tuple[int, dict]:
    """``run()``, with a failed checkout turned into its 502 answer: the purchase row exists
    (marked failed), so that answer is part of the record and is what a repeat replays."""
    try:
        return run()
    except CheckoutFailed as exc:
        return 502, {"error": exc.code, "message": exc.message, "purchase_id": exc.purchase_id}


def _request_key() -> str | None:
    """This token's ``Idempotency-Key``, as stored on what the request creates."""
    key = request.headers.get("Idempotency-Key")
    return f"{g.api_token.id}:{key}" if key else None


def _purchase(data: dict, request_key: str | None) -> tuple[int, dict]:
    request_ = purchases.check_purchase_input(data)
    if request_.payment_method == "credits":
        purchase = purchases.buy_with_credits(request_, request_key=request_key)
    else:
        settings = checkout.StripeSettings.from_config(current_app.config)
        # The pending purchase commits (ending the validation reads) before Stripe is called.
        purchase = checkout.buy_by_card(request_, settings, request_key)
    return 201, purchases.describe(purchase, request_.product.sku)


@bp.route("/api/purchases/<purchase_id>", methods=ALL_METHODS)
@allow("GET", "HEAD")
@require_token
def get_purchase(purchase_id: str):
    """A purchase's status, amounts, fulfilment status and timestamps."""
    if not (purchase_id.isascii() and purchase_id.isdigit()) or len(purchase_id) > 15:
        raise ApiError(404, "not_found", f"purchase {purchase_id[:40]!r} does not exist")
    purchase = purchases.get_purchase(int(purchase_id))
    sku = purchases.product_sku(purchase.product_id)
    return jsonify(purchases.describe(purchase, sku)), 200
