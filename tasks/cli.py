"""``flask --app wsgi worker``: the documented way to run a consumer."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from tasks.consumer import build_consumer
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.services.engine import consumers, reconciler


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
    threads = workers or config["WORKER_THREADS"]
    consumer = build_consumer(
        current_app.extensions["backstop.huey"],
        workers=threads,
        periodic=scheduler,
        tick_seconds=config["RECONCILE_INTERVAL_SECONDS"],
        shutdown_timeout=config["WORKER_SHUTDOWN_TIMEOUT"],
        heartbeat=consumers.Heartbeat(
            current_app._get_current_object(),
            threads=threads,
            scheduler=scheduler,
            interval=config["CONSUMER_HEARTBEAT_SECONDS"],
        ),
    )
    _recover_predecessors(config)
    consumer.run()


def _recover_predecessors(config) -> None:
    """Pick up what a killed consumer left (its attempts, its lost rings) before taking new work."""
    log = logging.getLogger("backstop.worker")
    try:
        report = reconciler.recover_after_restart(utcnow(), config)
    except Exception:  # the database may be away at start; the periodic reconciler will do it
        db.session.rollback()
        log.exception("start-up recovery failed; the reconciler will catch up")
        return
    finally:
        db.session.remove()
    log.info("start-up recovery: %s", report)
