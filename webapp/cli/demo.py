"""``flask --app wsgi demo-data``: fill an empty database with a realistic mix."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from webapp.devdata import demo


@click.command("demo-data")
@with_appcontext
@click.option("--days", default=7, show_default=True, help="Spread the operations over this many days.")
@click.option("--seed", default=7, show_default=True, help="Random seed, for a repeatable mix.")
def demo_data_command(days: int, seed: int):
    """Fill an EMPTY database with a realistic mix of purchases, webhooks, emails and failures."""
    try:
        summary = demo.fill(days=days, seed=seed)
    except demo.NotEmpty as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("demo data: " + ", ".join(f"{count} {what}" for what, count in summary.items()))
