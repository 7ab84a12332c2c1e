"""``flask --app wsgi stripe send-event``: sign a realistic Stripe event and POST it."""

from __future__ import annotations

import sys

import click
import requests
from flask import current_app
from flask.cli import AppGroup

from webapp.cli.common import fail
from webapp.devdata import stripe_samples
from webapp.extensions import db
from webapp.models import Purchase

stripe_cli = AppGroup("stripe", help="Stripe developer affordances.")


@stripe_cli.command("send-event")
@click.argument("event_type", type=click.Choice(stripe_samples.SUPPORTED_TYPES))
@click.option("--url", default="http://127.0.0.1:5000/webhooks/stripe", show_default=True)
@click.option("--purchase-id", type=int, help="The purchase the event is about (details read from the database).")
@click.option("--amount-refunded", type=int, help="charge.refunded: cumulative refunded cents (default: all).")
@click.option("--event-id", help="Reuse an event id (to try a replay).")
@click.option("--secret", help="Signing secret (default: the first of STRIPE_WEBHOOK_SECRET).")
@click.option("--timeout", default=10.0, show_default=True)
def send_event(event_type, url, purchase_id, amount_refunded, event_id, secret, timeout):
    """Build a realistic EVENT_TYPE event, sign it like Stripe and POST it (like `stripe trigger`)."""
    secret = secret or next(iter(current_app.config["STRIPE_WEBHOOK_SECRET"]), None)
    if not secret:
        fail("no signing secret: set STRIPE_WEBHOOK_SECRET or pass --secret")
    event = stripe_samples.build_event(
        event_type, _facts(purchase_id), event_id=event_id, amount_refunded=amount_refunded
    )
    body = stripe_samples.encode(event)
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": stripe_samples.signature_header(body, secret),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks; backstop send-event)",
    }
    try:
        response = requests.post(url, data=body.encode("utf-8"), headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        fail(f"could not reach {url}: {exc}")
    click.echo(f"sent {event['type']} {event['id']} -> HTTP {response.status_code} {response.text.strip()[:500]}")
    if response.status_code >= 300:
        sys.exit(1)


def _facts(purchase_id: int | None) -> stripe_samples.PurchaseFacts:
    """Details of the purchase from the local database when it is there, else plausible ones."""
    if purchase_id is None:
        return stripe_samples.PurchaseFacts()
    purchase = None
    try:
        purchase = db.session.get(Purchase, purchase_id)
        if purchase is not None:
            facts = stripe_samples.PurchaseFacts(
                purchase_id=purchase_id,
                amount_cents=purchase.amount_cents,
                currency=purchase.currency,
                email=purchase.customer.email,
                payment_intent_id=purchase.stripe_payment_intent_id,
                session_id=purchase.stripe_checkout_session_id,
            )
            db.session.rollback()
            return facts
    except Exception as exc:  # the target may be another machine: the event is still useful
        click.secho(f"(purchase {purchase_id} not read from the local database: {type(exc).__name__})", err=True)
    db.session.rollback()
    return stripe_samples.PurchaseFacts(purchase_id=purchase_id)
