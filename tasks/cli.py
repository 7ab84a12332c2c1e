"""``flask --app wsgi worker``: the documented way to run a consumer."""

from __future__ import annotations

import logging

import click
from flask import Flask
from huey import Huey

from tasks.consumer import build_consumer


def register_cli(app: Flask, huey: Huey) -> None:
    """Add the ``worker`` command to the app's CLI."""

    @app.cli.command("worker")
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
        consumer = build_consumer(
            huey,
            workers=workers or app.config["WORKER_THREADS"],
            periodic=scheduler,
            tick_seconds=app.config["RECONCILE_INTERVAL_SECONDS"],
            shutdown_timeout=app.config["WORKER_SHUTDOWN_TIMEOUT"],
        )
        consumer.run()
