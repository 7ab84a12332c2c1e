"""CLI for payments: ``products``, ``tokens`` and ``stripe send-event`` (``flask --app wsgi ...``)."""

from __future__ import annotations

import sys

import click
import requests
from flask import Flask, current_app
from flask.cli import AppGroup

from webapp.devdata import stripe_samples
from webapp.extensions import db
from webapp.models import Purchase
from webapp.services.access import tokens
from webapp.services.payments import catalogue, intake
from webapp.services.payments.errors import PaymentsError

products_cli = AppGroup("products", help="The product catalogue: lead listings and credit packs.")
tokens_cli = AppGroup("tokens", help="Bearer tokens for the storefront and admin APIs.")
stripe_cli = AppGroup("stripe", help="Stripe developer affordances.")


def register(app: Flask) -> None:
    """Add the payments command groups to the app's CLI."""
    for group in (products_cli, tokens_cli, stripe_cli):
        app.cli.add_command(group)


def _fail(message: str) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


@products_cli.command("add")
@click.argument("sku")
@click.option("--name", required=True, help="Shown to customers and in emails.")
@click.option("--kind", type=click.Choice(["lead", "credits"]), required=True)
@click.option("--price-cents", type=int, required=True)
@click.option("--currency", default="usd", show_default=True)
@click.option(
    "--credits", "credits_granted", type=int, default=0, help="Credit cents a credit pack adds to the balance."
)
def products_add(sku, name, kind, price_cents, currency, credits_granted):
    """Add a product."""
    try:
        product = catalogue.add_product(
            sku, name, kind, price_cents, currency=currency, credits_granted=credits_granted
        )
    except PaymentsError as exc:
        _fail(f"cannot add product: {exc.message}")
    click.echo(f"added product {product.id} {product.sku} ({product.kind}, {product.price_cents} {product.currency})")


@products_cli.command("list")
@click.option("--active-only", is_flag=True)
def products_list(active_only):
    """List products."""
    rows = catalogue.list_products(include_inactive=not active_only)
    if not rows:
        click.echo("no products")
    for product in rows:
        extra = f" grants {product.credits_granted}" if product.kind == "credits" else ""
        state = "active" if product.active else "inactive"
        click.echo(
            f"{product.id:>4}  {product.sku:<24} {product.kind:<8} {product.price_cents:>8} "
            f"{product.currency}  {state}{extra}  {product.name}"
        )


@products_cli.command("deactivate")
@click.argument("sku")
def products_deactivate(sku):
    """Stop selling a product."""
    try:
        catalogue.deactivate_product(sku)
    except PaymentsError as exc:
        _fail(exc.message)
    click.echo(f"deactivated {sku}")


@tokens_cli.command("create")
@click.option("--scope", type=click.Choice(["storefront", "admin"]), required=True)
@click.option("--name", required=True, help="Who or what uses the token.")
def tokens_create(scope, name):
    """Create a token; it is printed once and only its hash is kept."""
    try:
        issued = tokens.create_token(name, scope)
    except tokens.TokenError as exc:
        _fail(str(exc))
    click.echo(f"token {issued.token.id} ({scope}, {issued.token.name}) created. Copy it now, it is not shown again:")
    click.echo(issued.raw)


@tokens_cli.command("list")
def tokens_list():
    """List tokens (prefix only, never the secret)."""
    rows = tokens.list_tokens()
    if not rows:
        click.echo("no tokens")
    for token in rows:
        state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
        used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
        click.echo(f"{token.id:>4}  {token.scope:<10} {token.prefix}…  {state:<24} last used {used}  {token.name}")


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id):
    """Revoke a token at once."""
    try:
        tokens.revoke_token(token_id)
    except tokens.TokenError as exc:
        _fail(str(exc))
    click.echo(f"revoked token {token_id}")


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
    secret = secret or next(iter(intake.parse_secrets(current_app.config.get("STRIPE_WEBHOOK_SECRET"))), None)
    if not secret:
        _fail("no signing secret: set STRIPE_WEBHOOK_SECRET or pass --secret")
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
        _fail(f"could not reach {url}: {exc}")
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
