"""The storefront API's routes, their token and method checks and Idempotency-Key handling."""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, jsonify, request

from webapp.blueprints.api.blueprint import bp
from webapp.blueprints.json_api import (
    ALL_METHODS,
    ApiError,
    BadText,
    MalformedJson,
    bearer_token,
    error_body,
    iso,
    parse_json_object,
)
from webapp.domain.text import LONE_SURROGATE
from webapp.services.access import idempotency, tokens
from webapp.services.payments import checkout, customers, purchases
from webapp.services.payments.errors import CHECKOUT_FAILED_MESSAGE, CheckoutFailed, NotFound, ValidationFailed

SCOPE = "storefront"


def require_token(view):
    """Let the request through only with an active storefront bearer token."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        raw = bearer_token(request)
        if raw is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <storefront token>")
        token = tokens.authenticate(raw, SCOPE)
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
    limit = current_app.config["API_MAX_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    try:
        return parse_json_object(raw), raw
    except BadText as exc:
        raise ValidationFailed({exc.field: LONE_SURROGATE}) from None
    except MalformedJson as exc:
        raise ApiError(400, "malformed_json", str(exc)) from None


@bp.route("/api/customers", methods=ALL_METHODS)
@allow("POST")
@require_token
def create_customer():
    """Create a customer (201) and queue their welcome email in the same transaction."""
    data, raw = json_body()
    return answer_once(raw, lambda: _customer(data))


def _customer(data: dict) -> tuple[int, dict]:
    customer = customers.create_customer(data, storefront=g.api_token.name)
    return 201, {
        "id": customer.id,
        "email": customer.email,
        "name": customer.name,
        "credit_balance_cents": customer.credit_balance_cents,
        "created_at": iso(customer.created_at),
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
        # The reason is logged and kept on the purchase; the client gets no SDK text.
        return 502, error_body(exc.code, CHECKOUT_FAILED_MESSAGE, purchase_id=exc.purchase_id)


def _request_key() -> str | None:
    """This token's ``Idempotency-Key``, as stored on what the request creates."""
    key = request.headers.get("Idempotency-Key")
    return f"{g.api_token.id}:{key}" if key else None


def _purchase(data: dict, request_key: str | None) -> tuple[int, dict]:
    request_ = purchases.check_purchase_input(data, storefront=g.api_token.name)
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
    if not purchases.visible_to(purchase, g.api_token.name):  # another storefront's: as if it did not exist
        raise NotFound(f"purchase {purchase_id} does not exist")
    sku = purchases.product_sku(purchase.product_id)
    return jsonify(purchases.describe(purchase, sku)), 200
