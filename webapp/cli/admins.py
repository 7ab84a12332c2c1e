"""``flask --app wsgi create-admin EMAIL`` / ``set-password EMAIL``: admins who can log in to /admin."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from webapp.cli.common import cli_actor
from webapp.services.console import admins


@click.command("create-admin")
@with_appcontext
@click.argument("email")
@click.option("--password", help="For scripts; otherwise you are prompted (input hidden).")
def create_admin(email: str, password: str | None):
    """Create an admin user who can log in to /admin."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = admins.create_admin(email, password, by=cli_actor())
    except admins.AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created admin {user.email} (id {user.id})")


@click.command("set-password")
@with_appcontext
@click.argument("email")
@click.option("--password", help="For scripts; otherwise you are prompted (input hidden).")
def set_password(email: str, password: str | None):
    """Give an admin a new password; every session they have open ends."""
    if password is None:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        user, ended = admins.set_password(email, password, by=cli_actor())
    except admins.AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password changed for {user.email}; {ended} session{'s' if ended != 1 else ''} ended")
