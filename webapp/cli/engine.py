"""Commands on the operations engine: ``reconcile``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.services.engine import periodic, reconciler


@click.command("reconcile")
@with_appcontext
def reconcile_command():
    """Run one reconciler pass now (it normally runs as a periodic job)."""
    run = periodic.run_job(periodic.get_job(reconciler.JOB_NAME), current_app.config, force=True)
    if run is None:
        raise click.ClickException("another reconciler holds the lease; try again shortly")
    click.echo(f"{run.outcome}: {run.summary or run.error}")
