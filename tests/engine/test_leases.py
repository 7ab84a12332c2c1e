"""How long a claim holds an operation: the handler's own lease, else the worker's default."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from tests.engine.scripted import LEASE, T0, new_op
from tests.support.reads import attempts_of, load
from webapp.config import load as load_settings
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.services.engine import operations, runner
from webapp.services.engine.registry import Registry


def lease_of(operation_id: int) -> timedelta:
    return load(operation_id).lease_expires_at - T0


def test_a_handler_without_its_own_lease_is_held_for_the_configured_default(sqlite_app):
    # tests.support.handlers' "test.flaky" sets no lease of its own.
    operation = operations.create_operation("test.flaky", {}, idempotency_key="no-lease", now=T0)
    db.session.commit()

    runner.claim(operation.id, now=T0)

    default = load_settings({})["OPERATION_LEASE_SECONDS"]  # what workers pass when nothing is set
    assert lease_of(operation.id) == timedelta(seconds=default) == timedelta(minutes=5)


def test_a_handlers_own_lease_wins_over_the_workers_default(sqlite_app):
    operation_id = new_op("own-lease")

    runner.claim(operation_id, now=T0, default_lease=999)

    assert lease_of(operation_id) == timedelta(seconds=LEASE)


def test_an_operation_whose_handler_is_gone_is_held_for_the_workers_default(sqlite_app):
    operation_id = new_op("handler-gone")
    db.session.execute(update(Operation).where(Operation.id == operation_id).values(name="no.such.handler"))
    db.session.commit()

    runner.claim(operation_id, now=T0, default_lease=42)

    assert lease_of(operation_id) == timedelta(seconds=42)


def test_the_worker_recorded_on_an_attempt_fits_its_column(sqlite_app):
    operation_id = new_op("long-thread-name")

    def claim():
        with sqlite_app.app_context():
            runner.claim(operation_id, now=T0)
            db.session.remove()

    worker = threading.Thread(target=claim, name="W" * 300)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()

    [attempt] = attempts_of(operation_id)
    width = OperationAttempt.__table__.c.worker.type.length
    assert len(attempt.worker) == width and attempt.worker.endswith("W" * 20)


def test_a_handler_registered_after_a_claim_read_the_leases_gets_its_own_lease():
    handlers = Registry()
    handlers.register("job.short", "job", lambda ctx: None)
    assert handlers.own_leases() == ()  # read (and kept) by a claim

    handlers.register("job.long", "job", lambda ctx: None, lease_seconds=900)
    handlers.register("job.brief", "job", lambda ctx: None, lease_seconds=5)

    assert handlers.own_leases() == (("job.brief", 5), ("job.long", 900))
