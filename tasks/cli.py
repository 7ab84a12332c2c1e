"""``flask --app wsgi worker``: the documented way to run a consumer."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from tasks.consumer import build_consumer


@click.command("worker")
@with_appcontext
@click.option("--workers", "-w", type=int, default=None, help="Worker threads (default WORKER_THREADS).")
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    help="Run periodic jobs here. Exactly one consumer per deployment should, "
    "though the database leases make more than one safe.",
)
def worker(workers: int | None, scheduler: bool):
    """Run a Huey consumer: SIGTERM drains running operations, then exits."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = current_app.config
    consumer = build_consumer(
        current_app.extensions["backstop.huey"],
        workers=workers or config["WORKER_THREADS"],
        periodic=scheduler,
        tick_seconds=config["RECONCILE_INTERVAL_SECONDS"],
        shutdown_timeout=config["WORKER_SHUTDOWN_TIMEOUT"],
    )
    consumer.run()
