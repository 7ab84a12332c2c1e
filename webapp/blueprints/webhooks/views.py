"""The Stripe webhook route: read the body within its limit, verify, store, answer."""

from __future__ import annotations

import logging

from flask import Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from webapp.blueprints.json_api import ALL_METHODS, error_response
from webapp.blueprints.webhooks.blueprint import bp
from webapp.extensions import db
from webapp.services.payments import intake
from webapp.services.payments.intake import WebhookRejected

log = logging.getLogger("backstop.webhooks")

# What Stripe is told once the event is stored (Flask's jsonify of {"received": True}, encoded once).
RECEIVED = b'{"received":true}\n'


@bp.route("/webhooks/stripe", methods=ALL_METHODS)
def stripe_webhook():
    """Receive one Stripe event delivery."""
    if request.method != "POST":
        response = error_response(405, "method_not_allowed", "use POST")
        response.headers["Allow"] = "POST"
        return response
    max_bytes = current_app.config["WEBHOOK_MAX_BYTES"]
    body = _read_body(max_bytes)
    if body is None:
        return _reject(WebhookRejected(intake.TOO_LARGE, f"body is larger than {max_bytes} bytes"))
    secrets = current_app.config["STRIPE_WEBHOOK_SECRET"]
    try:
        event = intake.verify(body, request.headers.get("Stripe-Signature"), secrets)
    except WebhookRejected as rejected:
        return _reject(rejected)
    try:
        stored = intake.record_event(body.decode("utf-8"), event)
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.error("could not store Stripe event %s: %s", event.get("id"), type(exc).__name__)
        return _reject(WebhookRejected(intake.DATABASE_UNAVAILABLE, "the event could not be stored; retry later"))
    log.info(
        "stripe event %s %s %s",
        stored.event_id,
        stored.event_type,
        "stored" if stored.created else "replayed",
        extra={"event_id": stored.event_id, "operation_id": stored.operation_id},
    )
    return Response(RECEIVED, status=200, mimetype="application/json")


def _read_body(max_bytes: int) -> bytes | None:
    """The raw body, or None when it is over ``max_bytes`` (by header or by what was read)."""
    if request.content_length is not None and request.content_length > max_bytes:
        return None
    body = request.stream.read(max_bytes + 1)
    return None if len(body) > max_bytes else body


STATUS_BY_REASON = {
    intake.TOO_LARGE: 413,
    intake.NOT_CONFIGURED: 503,
    intake.DATABASE_UNAVAILABLE: 503,
}


def _reject(rejected: WebhookRejected):
    intake.count_rejection(rejected.reason)
    status = STATUS_BY_REASON.get(rejected.reason, 400)
    log.warning(
        "stripe webhook rejected (%s): %s", rejected.reason, rejected.message, extra={"reason": rejected.reason}
    )
    response = error_response(status, rejected.reason, rejected.message)
    if status == 503:
        response.headers["Retry-After"] = "30"
    if status == 413:
        # The rest of an oversized body is not read; close rather than reuse the connection.
        response.headers["Connection"] = "close"
    return response
