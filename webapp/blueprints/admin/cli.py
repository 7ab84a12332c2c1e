"""``flask --app wsgi create-admin EMAIL``, ``demo-data`` and ``refingerprint``."""

from __future__ import annotations

import click

from webapp.blueprints.admin import bp
from webapp.devdata import demo
from webapp.services.console import admins
from webapp.services.maintenance.refingerprint import refingerprint


@bp.cli.command("create-admin")
@click.argument("email")
@click.option("--password", help="For scripts; otherwise you are prompted (input hidden).")
def create_admin(email: str, password: str | None):
    """Create an admin user who can log in to /admin."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = admins.create_admin(email, password)
    except admins.AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created admin {user.email} (id {user.id})")


@bp.cli.command("demo-data")
@click.option("--days", default=7, show_default=True, help="Spread the operations over this many days.")
@click.option("--seed", default=7, show_default=True, help="Random seed, for a repeatable mix.")
def demo_data_command(days: int, seed: int):
    """Fill an EMPTY database with a realistic mix of purchases, webhooks, emails and failures."""
    try:
        summary = demo.fill(days=days, seed=seed)
    except demo.NotEmpty as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("demo data: " + ", ".join(f"{count} {what}" for what, count in summary.items()))


@bp.cli.command("refingerprint")
def refingerprint_command():
    """Recompute stored error fingerprints (needed only after the normalisation rules change)."""
    changed = refingerprint()
    click.echo(f"refingerprinted {changed} operation{'s' if changed != 1 else ''}")
