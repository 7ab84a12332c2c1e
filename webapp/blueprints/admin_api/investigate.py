"""The admin API's investigation routes: the Stripe event log (with replay), customers, purchases."""

from __future__ import annotations

from flask import jsonify, request

from webapp.blueprints.admin_api.blueprint import bp
from webapp.blueprints.admin_api.views import ID, _actor, _address, _limit, email_log_json, filtered_page
from webapp.blueprints.json_api import ApiError, iso
from webapp.services.console import audit, customers, stripe_events
from webapp.services.console.filters import MAX_ID, FilterError
from webapp.services.payments import purchases, replay
from webapp.services.payments.errors import Conflict, NotFound


def _link_json(link) -> dict:
    return {
        "id": link.id,
        "name": link.name,
        "state": link.state,
        "replay": link.replay,
        "requested_by": link.requested_by,
        "created_at": iso(link.created_at),
    }


def _event_json(event, links) -> dict:
    return {
        "id": event.id,
        "type": event.type,
        "object_id": event.object_id,
        "livemode": event.livemode,
        "api_version": event.api_version,
        "received_at": iso(event.received_at),
        "processing_state": event.processing_state,
        "processed_at": iso(event.processed_at),
        "body_trimmed": not event.payload,
        "operations": [_link_json(link) for link in links],
    }


def _event(event_id: str):
    detail = stripe_events.get_event(event_id)
    if detail is None:
        raise ApiError(404, "not_found", f"no Stripe event {event_id[:80]!r} is stored")
    return detail


@bp.get("/stripe-events")
def list_stripe_events():
    """Stored events, newest first: ``q`` (event or object id), ``type``, ``state``, ``limit``, ``cursor``."""
    filters, page = filtered_page(stripe_events.parse_event_filters, stripe_events.list_events)
    return jsonify(
        stripe_events=[_event_json(row, row.operations) for row in page.rows],
        next_cursor=page.next_cursor,
        filters=filters.to_args(),
    )


@bp.get("/stripe-events/<event_id>")
def get_stripe_event(event_id: str):
    """One event with its operations and its ``body`` (redacted JSON; null once retention trimmed it)."""
    detail = _event(event_id)
    return jsonify({**_event_json(detail.event, detail.operations), "body": detail.body})


@bp.post("/stripe-events/<event_id>/replay")
def replay_stripe_event(event_id: str):
    """Process a stored event again as a new operation: 202 with its id; 409 ``not_replayable``."""
    if not stripe_events.possible_event_id(event_id):
        raise ApiError(404, "not_found", "no Stripe event has such an id")
    try:
        with audit.recorded(
            "stripe_event.replay", actor=_actor(), target_type="stripe_event", target_id=event_id, address=_address()
        ):
            done = replay.replay_event(event_id, by=_actor())
    except NotFound as exc:
        raise ApiError(404, "not_found", exc.message) from None
    except Conflict as exc:
        raise ApiError(409, exc.code, exc.message) from None
    return jsonify(event_id=done.event_id, replay=done.number, operation_id=done.operation_id), 202


# --- customers and purchases --------------------------------------------------------------


def _customer_json(customer) -> dict:
    return {
        "id": customer.id,
        "email": customer.email,
        "name": customer.name,
        "credit_balance_cents": customer.credit_balance_cents,
        "storefront": customer.storefront,
        "created_at": iso(customer.created_at),
    }


def _story_json(story) -> dict:
    """The parts a customer and a purchase share: operations, emails, Stripe events, timeline."""
    return {
        "operations": [
            {
                "id": op.id,
                "name": op.name,
                "kind": op.kind,
                "state": op.state,
                "subject": op.subject,
                "attempts": op.attempts,
                "max_attempts": op.max_attempts,
                "error_message": op.error_message,
                "created_at": iso(op.created_at),
            }
            for op in story.operations
        ],
        "email_log": [{"operation_id": e.operation_id, **email_log_json(e)} for e in story.emails],
        "stripe_events": [_event_json(event, event.caused) for event in story.events],
        "timeline": [
            {
                "at": iso(entry.at),
                "kind": entry.kind,
                "title": entry.title,
                "detail": entry.detail,
                "state": entry.state,
                "href": entry.href,
            }
            for entry in story.timeline
        ],
    }


@bp.get("/customers")
def list_customers():
    """Customers whose email or name starts with ``q`` (any case), or the newest ones (``cursor``)."""
    try:
        page = customers.search_customers(request.args.get("q", ""), cursor=request.args.get("cursor"), limit=_limit())
    except FilterError as exc:
        code = "invalid_cursor" if "cursor" in str(exc) else "invalid_filter"
        raise ApiError(400, code, str(exc)) from None
    return jsonify(customers=[_customer_json(c) for c in page.rows], next_cursor=page.next_cursor, more=page.more)


@bp.get(f"/customers/<{ID}:customer_id>")
def get_customer(customer_id: int):
    """A customer with purchases, credit history, 7-day delivery stats and one timeline."""
    story = customers.customer_story(customer_id)
    if story is None:
        raise ApiError(404, "not_found", f"customer {customer_id} does not exist")
    return jsonify(
        {
            **_customer_json(story.customer),
            "purchases": [
                purchases.describe_for_admins(p, p.product.sku if p.product else None) for p in story.purchases
            ],
            "purchases_truncated": story.truncated,
            "credit_history": [
                {
                    "at": iso(line.at),
                    "cents": line.cents,
                    "why": line.why,
                    "purchase_id": line.purchase_id,
                    "source": line.source,
                }
                for line in story.credits
            ],
            "unexplained_credit_cents": story.unexplained_cents,
            "delivery_stats": story.stats,
            **_story_json(story),
        }
    )


@bp.get("/purchases/<int:purchase_id>")
def purchase_details(purchase_id: int):
    """A purchase as admins see it (the full failure reason, Stripe's ids) with its customer,
    operations, email log, Stripe events and timeline."""
    story = customers.purchase_story(purchase_id) if purchase_id <= MAX_ID else None
    if story is None:
        raise ApiError(404, "not_found", f"purchase {purchase_id} does not exist")
    purchase = story.purchases[0]
    return jsonify(
        {
            **purchases.describe_for_admins(purchase, purchase.product.sku if purchase.product else None),
            "customer": _customer_json(story.customer) if story.customer else None,
            **_story_json(story),
        }
    )
