"""The engine tests' scripted handler, fixed clock and helpers (in-process, no worker)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select

from tests.support.reads import detached
from webapp.domain.errors import Deferral, PermanentError
from webapp.domain.retry import RetryPolicy
from webapp.extensions import db
from webapp.models import Operation, PeriodicJob
from webapp.services.engine import doorbell, operations, reconciler
from webapp.services.engine.registry import handler

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2030, 1, 1, 12, 0, 0)
TICK_ORDER = ["reconciler", "auto_requeue", "cleanup", "daily_report", "checks"]
LEASE = 30
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=2), cap=timedelta(seconds=10))

# Per idempotency key, what the scripted handler does on each successive call.
SCRIPTS: dict[str, list] = {}


class Boom(Exception):
    """A handler failure of no special kind: transient."""


@handler("svc.script", kind="job", policy=POLICY, lease_seconds=LEASE)
def scripted(ctx):
    """Write what the payload asks for, then act out the next step of the key's script."""
    steps = SCRIPTS.get(ctx.idempotency_key) or []
    step = steps.pop(0) if steps else ("ok",)
    action = step[0]
    if action == "steal":
        # Another worker's reconciler decides this attempt's lease expired while it runs.
        reconciler.reconcile(step[1], current_app.config)
    if ctx.payload.get("write"):
        db.session.add(PeriodicJob(name=ctx.payload["write"]))
    if action == "transient":
        raise Boom(f"boom on attempt {ctx.attempt}")
    if action == "permanent":
        raise PermanentError("address rejected")
    if action == "defer":
        raise Deferral(step[1], "rate limited")


# --- helpers ------------------------------------------------------------------------------


def new_op(key: str, *steps, run_at=None, now=T0, **payload) -> int:
    """Create and commit a scripted operation; return its id."""
    SCRIPTS[key] = list(steps)
    operation = operations.create_operation("svc.script", payload, idempotency_key=key, run_at=run_at, now=now)
    db.session.commit()
    return operation.id


def job_row(name: str) -> PeriodicJob | None:
    return detached(lambda: db.session.get(PeriodicJob, name))


def count_ops(key: str) -> int:
    return detached(
        lambda: db.session.execute(
            select(func.count()).select_from(Operation).where(Operation.idempotency_key == key)
        ).scalar()
    )


def run_in_thread(app, fn, *args):
    """Run ``fn`` in a thread with its own app context (so its own session); return (thread, box)."""
    box: dict = {}

    def target():
        with app.app_context():
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # reported by the test, not lost in the thread
                box["error"] = exc
            finally:
                db.session.remove()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def result_of(thread, box, timeout: float = 30):
    thread.join(timeout)
    assert not thread.is_alive(), "thread did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


class RecordingDoorbell:
    """Remembers every ring instead of enqueueing."""

    def __init__(self):
        self.rings: list[tuple[int, datetime | None]] = []
        self.stamps: list[datetime | None] = []

    def ring(self, operation_id, eta=None, stamp=None):
        self.rings.append((operation_id, eta))
        self.stamps.append(stamp)

    def depth(self):
        return {"pending": len(self.rings), "scheduled": 0}

    def oldest_waiting(self):
        return None  # rings are recorded, not queued: nothing waits

    def ids(self) -> list[int]:
        return [operation_id for operation_id, _ in self.rings]


@contextmanager
def ringing_into(bell):
    """The app rings ``bell`` instead of its own doorbell until the block ends, then the previous one again."""
    previous = doorbell.get_doorbell()
    doorbell.set_doorbell(bell)
    try:
        yield bell
    finally:
        doorbell.set_doorbell(previous)
