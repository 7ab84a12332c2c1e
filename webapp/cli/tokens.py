"""``flask --app wsgi tokens ...``: bearer tokens for the storefront and admin APIs."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from webapp.cli.common import cli_actor, fail
from webapp.services.access import tokens
from webapp.services.console import audit

tokens_cli = AppGroup("tokens", help="Bearer tokens for the storefront and admin APIs.")


@tokens_cli.command("create")
@click.option("--scope", type=click.Choice(["storefront", "admin"]), required=True)
@click.option("--name", required=True, help="Who or what uses the token.")
def tokens_create(scope, name):
    """Create a token; it is printed once and only its hash is kept."""
    try:
        issued = tokens.create_token(name, scope, before_commit=_record_creation)
    except tokens.TokenError as exc:
        fail(str(exc))
    click.echo(f"token {issued.token.id} ({scope}, {issued.token.name}) created. Copy it now, it is not shown again:")
    click.echo(issued.raw)


def _record_creation(token) -> None:
    audit.record(
        "token.create",
        actor=cli_actor(),
        target_type="api_token",
        target_id=str(token.id),
        details={"name": token.name, "scope": token.scope, "prefix": token.prefix},
    )


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
        with audit.recorded("token.revoke", actor=cli_actor(), target_type="api_token", target_id=str(token_id)):
            tokens.revoke_token(token_id)
    except tokens.TokenError as exc:
        fail(str(exc))
    click.echo(f"revoked token {token_id}")
