"""Commands on the operations engine: ``reconcile`` and ``refingerprint``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.domain.time import utcnow
from webapp.services.console import queries


@click.command("reconcile")
@with_appcontext
def reconcile_command():
    """Run one reconciler pass now (it normally runs as a periodic job)."""
    from webapp.services.engine import periodic, reconciler

    config = current_app.config
    run = periodic.run_exclusive(
        reconciler.JOB_NAME,
        lambda now: str(
            reconciler.reconcile(
                now, batch_size=config["RECONCILE_BATCH_SIZE"], redeliver_after=config["REDELIVER_AFTER_SECONDS"]
            )
        ),
        interval_seconds=0,
        lease_seconds=config["RECONCILE_LEASE_SECONDS"],
        clock=utcnow,
    )
    if run is None:
        raise click.ClickException("another reconciler holds the lease; try again shortly")
    click.echo(f"{run.outcome}: {run.summary or run.error}")


@click.command("refingerprint")
@with_appcontext
def refingerprint_command():
    """Recompute stored error fingerprints (needed only after the normalisation rules change)."""
    changed = queries.refingerprint()
    click.echo(f"refingerprinted {changed} operation{'s' if changed != 1 else ''}")
