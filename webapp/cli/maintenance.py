"""Maintenance commands: ``refingerprint``."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from webapp.services.maintenance.refingerprint import refingerprint


@click.command("refingerprint")
@with_appcontext
def refingerprint_command():
    """Recompute stored error fingerprints (needed only after the normalisation rules change)."""
    changed = refingerprint()
    click.echo(f"refingerprinted {changed} operation{'s' if changed != 1 else ''}")
