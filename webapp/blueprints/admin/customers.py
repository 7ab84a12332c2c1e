"""Console pages to investigate: the Stripe event log (with replay), customers and purchases."""

from __future__ import annotations

from flask import abort, current_app, make_response, redirect, render_template, request, url_for
from flask_login import login_required

from webapp.blueprints.admin.blueprint import bp
from webapp.blueprints.admin.views import ID, _address, _by, _is_fragment, filtered_page
from webapp.services.console import audit, customers, stripe_events
from webapp.services.console.filters import MAX_ID, FilterError
from webapp.services.payments import purchases, replay
from webapp.services.payments.errors import Conflict, NotFound


def _event_id(event_id: str) -> str:
    """The id from the URL, or 404 for one no stored event can have (too long, NUL, lone surrogate)."""
    if not stripe_events.possible_event_id(event_id):
        abort(404, description="no Stripe event has such an id")
    return event_id


@bp.app_template_filter("subject_href")
def subject_href(subject: str | None) -> str | None:
    """The console page of an operation's subject (``purchase:<id>``, ``customer:<id>``), if it has one."""
    kind, _, raw_id = (subject or "").partition(":")
    if kind not in ("purchase", "customer") or not (raw_id.isascii() and raw_id.isdigit()) or int(raw_id) > MAX_ID:
        return None
    if kind == "purchase":
        return url_for("admin.purchase", purchase_id=int(raw_id))
    return url_for("admin.customer", customer_id=int(raw_id))


# --- the Stripe event log -----------------------------------------------------------------


@bp.get("/stripe-events")
@login_required
def stripe_event_log():
    """Stored Stripe events, newest first; the list or its next rows alone for htmx (same URL)."""
    _filters, page = filtered_page(stripe_events.parse_event_filters, stripe_events.list_events)
    if _is_fragment("load-more-events"):
        return render_template("admin/_events_rows.html", page=page)
    if _is_fragment("events-list"):
        return render_template("admin/_events_list.html", page=page)
    return render_template("admin/stripe_events.html", page=page, types=stripe_events.handled_types())


@bp.get("/stripe-events/<event_id>")
@login_required
def stripe_event(event_id: str):
    """One event: its facts, the operations it caused, its redacted body, and Replay."""
    detail = stripe_events.get_event(_event_id(event_id))
    if detail is None:
        abort(404, description=f"no Stripe event {event_id[:80]!r} is stored")
    return render_template("admin/stripe_event.html", detail=detail, refusal=None)


@bp.post("/stripe-events/<event_id>/replay")
@login_required
def stripe_event_replay(event_id: str):
    """Replay the event as a new operation; the event's operations come back with it listed."""
    event_id = _event_id(event_id)
    try:
        with audit.recorded(
            "stripe_event.replay", actor=_by(), target_type="stripe_event", target_id=event_id, address=_address()
        ):
            done = replay.replay_event(event_id, by=_by())
    except NotFound as exc:
        abort(404, description=exc.message)
    except Conflict as exc:
        abort(409, description=exc.message)
    if not request.headers.get("HX-Request"):
        return redirect(url_for("admin.stripe_event", event_id=event_id))
    detail = stripe_events.get_event(event_id)
    message = f"Replay {done.number} queued as operation #{done.operation_id}."
    return make_response(
        render_template("admin/_event_operations.html", detail=detail, message=message, new_id=done.operation_id)
    )


# --- customers and purchases --------------------------------------------------------------


@bp.get("/customers")
@login_required
def customer_list():
    """Search customers by a prefix of their email or name (any case); the rows alone for htmx."""
    try:
        page = customers.search_customers(
            request.args.get("q", ""), cursor=request.args.get("cursor"), limit=current_app.config["ADMIN_PAGE_SIZE"]
        )
    except FilterError as exc:
        abort(400, description=str(exc))
    if _is_fragment("load-more-customers"):
        return render_template("admin/_customers_rows.html", page=page)
    if _is_fragment("customers-list"):
        return render_template("admin/_customers_list.html", page=page)
    return render_template("admin/customers.html", page=page)


@bp.get(f"/customers/<{ID}:customer_id>")
@login_required
def customer(customer_id: int):
    """A customer's purchases, credit balance and history, delivery stats and one timeline."""
    story = customers.customer_story(customer_id)
    if story is None:
        abort(404, description=f"customer {customer_id} does not exist")
    return render_template("admin/customer.html", story=story, customer=story.customer)


@bp.get(f"/purchases/<{ID}:purchase_id>")
@login_required
def purchase(purchase_id: int):
    """A purchase, its customer, operations, Stripe events, emails and the full failure reason."""
    story = customers.purchase_story(purchase_id)
    if story is None:
        abort(404, description=f"purchase {purchase_id} does not exist")
    item = story.purchases[0]
    sku = item.product.sku if item.product else None
    return render_template(
        "admin/purchase.html",
        story=story,
        purchase=item,
        customer=story.customer,
        admin_view=purchases.describe_for_admins(item, sku),
    )
