"""``flask --app wsgi products ...``: the product catalogue."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from webapp.cli.common import fail
from webapp.services.payments import catalogue
from webapp.services.payments.errors import PaymentsError

products_cli = AppGroup("products", help="The product catalogue: lead listings and credit packs.")


@products_cli.command("add")
@click.argument("sku")
@click.option("--name", required=True, help="Shown to customers and in emails.")
@click.option("--kind", type=click.Choice(["lead", "credits"]), required=True)
@click.option("--price-cents", type=int, required=True)
@click.option("--currency", default="usd", show_default=True)
@click.option(
    "--credit-cents",
    "credit_cents_granted",
    type=int,
    default=0,
    help="Cents of credit a credit pack adds to the buyer's balance (a $100 pack: 10000).",
)
def products_add(sku, name, kind, price_cents, currency, credit_cents_granted):
    """Add a product."""
    try:
        product = catalogue.add_product(
            sku, name, kind, price_cents, currency=currency, credit_cents_granted=credit_cents_granted
        )
    except PaymentsError as exc:
        fail(f"cannot add product: {exc.message}")
    click.echo(f"added product {product.id} {product.sku} ({product.kind}, {product.price_cents} {product.currency})")


@products_cli.command("list")
@click.option("--active-only", is_flag=True)
def products_list(active_only):
    """List products."""
    rows = catalogue.list_products(include_inactive=not active_only)
    if not rows:
        click.echo("no products")
    for product in rows:
        extra = f" grants {product.credit_cents_granted} cents of credit" if product.kind == "credits" else ""
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
        fail(exc.message)
    click.echo(f"deactivated {sku}")
