"""Stripe event handlers: the ``stripe.<event type>`` operations created by the webhook intake.

Each loads its stored event, applies one conditional purchase transition (so a replayed
or duplicate event is a no-op), and marks the event processed, all in the engine's
success transaction. An event that arrives before the purchase is ready for it (a refund
before the completion) defers; after ``DEFER_WINDOW`` of that it dead-letters with a reason.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from sqlalchemy import select

from webapp.domain.errors import Deferral, PermanentError
from webapp.domain.retry import RetryPolicy
from webapp.domain.text import storable
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Purchase, StripeEvent
from webapp.services.engine.registry import HandlerContext, handler, registry
from webapp.services.engine.runner import on_outcome
from webapp.services.payments import purchases
from webapp.services.payments.intake import OPERATION_PREFIX, mark_event

log = logging.getLogger("backstop.stripe")

# Outcomes of a transition that did something (any other outcome is a no-op).
APPLIED = frozenset({"completed", "failed", "expired", "refunded", "partially_refunded"})

# Stripe webhook processing: 5 retries, exponential backoff with full jitter (seed 000).
WEBHOOK_POLICY = RetryPolicy.retries(5)
DEFER_STEP = timedelta(seconds=30)
DEFER_WINDOW = timedelta(hours=1)


# Every registered stripe.* handler, so init_app can re-register them with a configured policy.
HANDLED: dict[str, object] = {}


def stripe_handler(*event_types: str):
    """Register one function as the handler of several ``stripe.<type>`` operations."""

    def decorator(fn):
        for event_type in event_types:
            HANDLED[event_type] = fn
            handler(OPERATION_PREFIX + event_type, kind="webhook", policy=WEBHOOK_POLICY)(fn)
        return fn

    return decorator


def policy_from_config(config) -> RetryPolicy:
    """``WEBHOOK_RETRY_LADDER`` if set (tests, operators), else 5 exponential retries."""
    ladder = config["WEBHOOK_RETRY_LADDER"]
    return RetryPolicy.from_steps(ladder) if ladder else WEBHOOK_POLICY


def register_handlers(policy: RetryPolicy) -> None:
    """(Re-)register every stripe.* handler with ``policy``."""
    for event_type, fn in HANDLED.items():
        registry.register(OPERATION_PREFIX + event_type, "webhook", fn, policy)


def load_event(ctx: HandlerContext) -> tuple[StripeEvent, dict]:
    """The stored event row for this operation and its ``data.object``.

    A stored body that is not an event with an object (its retention copy was cleared, it
    was stored by hand or by an older intake) is a PermanentError naming what is missing:
    retrying cannot repair it, and a ``KeyError`` would only say ``'data'``.
    """
    event_id = ctx.payload.get("event_id")
    row = db.session.get(StripeEvent, event_id) if isinstance(event_id, str) and event_id else None
    if row is None:
        raise PermanentError(f"stored Stripe event {event_id!r} does not exist")
    return row, event_object(row)


def event_object(row: StripeEvent) -> dict:
    """The ``data.object`` of a stored event, or PermanentError saying why there is none."""
    if not row.payload:
        raise PermanentError(
            f"stored Stripe event {row.id} has no body (cleared by retention?): re-send it from the Stripe dashboard"
        )
    try:
        event = json.loads(row.payload)
    except (ValueError, RecursionError) as exc:
        raise PermanentError(f"stored Stripe event {row.id} is not valid JSON") from exc
    data = event.get("data") if isinstance(event, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise PermanentError(
            f"stored Stripe event {row.id} ({row.type}) has no data.object, so there is nothing to apply"
        )
    return obj


def finish(
    ctx: HandlerContext, row: StripeEvent, outcome: str, state: str = "processed", purchase_id: int | None = None
) -> dict:
    """Mark the event processed (or ignored) in the success transaction; return the operation's result.

    The result says what the event did (``completed``, ``already_completed``, ``not_ours``...), so
    the console's timeline shows why a replayed or duplicate event changed nothing; a replay also
    says in the log whether it applied anything.
    """
    mark_event(row.id, state, now=ctx.now)
    result = {"event_id": row.id, "event_type": row.type, "outcome": outcome, "event_state": state}
    if purchase_id is not None:
        result["purchase_id"] = purchase_id
    if outcome.startswith("already_"):
        result[outcome] = True  # e.g. {"already_completed": true}: idempotency made it a no-op
    replay = ctx.payload.get("replay")
    if replay:
        result["replay"] = replay
        applied = "applied again" if outcome in APPLIED else "nothing applied again (no email, no credit)"
        log.info("stripe event %s replay %s: %s, %s", row.id, replay, outcome, applied)
    return result


@stripe_handler("checkout.session.completed", "checkout.session.async_payment_succeeded")
def checkout_paid(ctx: HandlerContext) -> dict:
    """Complete the purchase named in the session's metadata, exactly once."""
    row, session = load_event(ctx)
    purchase = _purchase_for(session, row)
    if purchase is None:
        return finish(ctx, row, "not_ours", "ignored")
    if row.type == "checkout.session.completed" and session.get("payment_status") not in (
        "paid",
        "no_payment_required",
    ):
        # Delayed payment methods: the money is not there yet; async_payment_succeeded follows.
        return finish(ctx, row, "awaiting_async_payment", purchase_id=purchase.id)
    result = purchases.complete(
        purchase.id,
        now=ctx.now,
        session_id=_str(session.get("id")),
        payment_intent_id=_id_of(session.get("payment_intent")),
    )
    if result.outcome.startswith("not_completable"):
        raise PermanentError(
            f"payment received for purchase {purchase.id}, but it is {result.purchase.status}: "
            "refund or reconcile it by hand"
        )
    summary = finish(ctx, row, result.outcome, purchase_id=purchase.id)
    if result.outcome == "completed":
        summary.update(_completion_summary(result.purchase))
    return summary


@stripe_handler("checkout.session.async_payment_failed", "checkout.session.expired")
def checkout_unpaid(ctx: HandlerContext) -> dict:
    """Mark the purchase failed (async payment failed) or expired, and tell the customer."""
    row, session = load_event(ctx)
    purchase = _purchase_for(session, row)
    if purchase is None:
        return finish(ctx, row, "not_ours", "ignored")
    if row.type == "checkout.session.expired":
        result = purchases.fail(purchase.id, "expired", "the checkout session expired before payment", now=ctx.now)
    else:
        result = purchases.fail(purchase.id, "failed", "the delayed payment failed", now=ctx.now)
    return finish(ctx, row, result.outcome, purchase_id=purchase.id)


@stripe_handler("payment_intent.payment_failed")
def payment_failed(ctx: HandlerContext) -> dict:
    """A declined payment: mark the pending purchase failed with Stripe's reason, tell the customer."""
    row, intent = load_event(ctx)
    purchase = _purchase_for(intent, row, payment_intent_id=_str(intent.get("id")))
    if purchase is None:
        return finish(ctx, row, "not_ours", "ignored")
    error = intent.get("last_payment_error") or {}
    reason = (error.get("message") if isinstance(error, dict) else None) or "the payment was declined"
    # Stripe's text is shown to the customer and stored: a NUL in it must not fail every attempt.
    result = purchases.fail(purchase.id, "failed", storable(str(reason)), now=ctx.now)
    return finish(ctx, row, result.outcome, purchase_id=purchase.id)


@stripe_handler("charge.refunded")
def charge_refunded(ctx: HandlerContext) -> dict:
    """Record a full or partial refund (from the charge's cumulative amount_refunded) and notify."""
    row, charge = load_event(ctx)
    payment_intent_id = _id_of(charge.get("payment_intent"))
    purchase = _purchase_for(charge, row, payment_intent_id=payment_intent_id)
    if purchase is None:
        # The completion that records the payment intent may simply not have been processed yet.
        _defer_or_give_up(
            ctx, row, f"no purchase matches charge {charge.get('id')} (payment intent {payment_intent_id})"
        )
    amount_refunded = charge.get("amount_refunded")
    if isinstance(amount_refunded, bool) or not isinstance(amount_refunded, int) or amount_refunded < 0:
        raise PermanentError(f"charge {charge.get('id')} has no valid amount_refunded")
    if purchase.status in ("pending", "failed"):
        _defer_or_give_up(ctx, row, f"refund for purchase {purchase.id} arrived while it is {purchase.status}")
    if purchase.status == "expired":
        raise PermanentError(f"refund for purchase {purchase.id}, which expired unpaid: check it in Stripe")
    result = purchases.refund(purchase.id, amount_refunded, now=ctx.now, event_id=row.id)
    summary = finish(ctx, row, result.outcome, purchase_id=purchase.id)
    if not result.outcome.startswith(("already_", "not_refundable")):
        summary["refunded_cents"] = result.purchase.refunded_cents
    return summary


def _completion_summary(purchase: Purchase) -> dict:
    """What completing a purchase did besides the status: credits granted, the confirmation queued."""
    product = purchase.product
    summary = {"confirmation_queued": True}
    if product.kind == "credits" and product.credit_cents_granted:
        summary["credits_granted"] = product.credit_cents_granted
    return summary


def _defer_or_give_up(ctx: HandlerContext, row: StripeEvent, why: str) -> None:
    """Defer by DEFER_STEP, or dead-letter once the event has waited DEFER_WINDOW since it arrived."""
    waited = ctx.now - row.received_at
    if waited >= DEFER_WINDOW:
        raise PermanentError(
            f"{why}; still not applicable {_minutes(waited)} after the event arrived, "
            "so it needs a person (check the purchase, then retry or resolve)"
        )
    raise Deferral(ctx.now + DEFER_STEP, f"{why}; waiting for the purchase to be ready")


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} minutes"


def _purchase_for(obj: dict, row: StripeEvent, *, payment_intent_id: str | None = None) -> Purchase | None:
    """The purchase named by the object's metadata, else by its payment intent.

    A metadata purchase id that does not exist is a PermanentError (it came from us, so
    something is badly wrong); an object with no purchase id at all is not ours (None).
    """
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    raw_id = metadata.get("purchase_id") or obj.get("client_reference_id")
    if raw_id not in (None, ""):
        purchase_id = _purchase_id(raw_id, row)
        purchase = db.session.get(Purchase, purchase_id, populate_existing=True)
        if purchase is None:
            raise PermanentError(f"{row.type} {row.id} names purchase {purchase_id}, which does not exist")
        return purchase
    if payment_intent_id:
        found = db.session.execute(
            select(Purchase).where(Purchase.stripe_payment_intent_id == payment_intent_id).limit(1)
        ).scalar_one_or_none()
        if found is not None:
            return found
    return None


def _purchase_id(raw_id, row: StripeEvent) -> int:
    """A purchase id from metadata (ASCII digits, in range), or PermanentError."""
    text = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else ""
    if not (text.isascii() and text.isdigit() and 0 < int(text) < purchases.MAX_ID):
        raise PermanentError(f"{row.type} {row.id} names purchase {str(raw_id)[:80]!r}, which is not a purchase id")
    return int(text)


def _id_of(value) -> str | None:
    """An expandable Stripe field: either an id string or an object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    return _str(value)


def _str(value) -> str | None:
    return value[:255] if isinstance(value, str) and value else None


@on_outcome(outcomes=("dead",))
def mark_dead_events(operation, outcome: str) -> None:
    """A dead-lettered event's processing marks the stored event ``failed`` (same transaction)."""
    if not operation.name.startswith(OPERATION_PREFIX):
        return
    event_id = (operation.payload or {}).get("event_id")
    if event_id:
        mark_event(event_id, "failed", now=operation.updated_at or utcnow())
