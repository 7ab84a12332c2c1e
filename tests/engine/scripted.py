"""A scripted handler for the engine tests: each operation acts out the steps its key was given."""

from __future__ import annotations

from datetime import datetime, timedelta

from webapp.domain.errors import Deferral, PermanentError
from webapp.domain.retry import RetryPolicy
from webapp.extensions import db
from webapp.models import PeriodicJob
from webapp.services.engine import operations
from webapp.services.engine.registry import handler

NAME = "engine-tests.script"
T0 = datetime(2030, 1, 1, 12, 0, 0)
LEASE = 30
# No jitter, so every retry's due time is known: 2 s, then 4 s.
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=2), cap=timedelta(seconds=10), jitter=False)

# Per idempotency key, what the handler does on each successive call: a callable (given the
# context) or one of "ok", "transient", "permanent", ("defer", until).
SCRIPTS: dict[str, list] = {}


class Boom(Exception):
    """A handler failure of no special kind: transient."""


@handler(NAME, kind="job", policy=POLICY, lease_seconds=LEASE)
def scripted(ctx):
    """Act out the next step of the operation's script; a callable step's return value is the result."""
    steps = SCRIPTS.get(ctx.idempotency_key) or []
    step = steps.pop(0) if steps else "ok"
    result = None
    if callable(step):
        result = step(ctx)
    elif step == "transient":
        raise Boom(f"boom on attempt {ctx.attempt}")
    elif step == "permanent":
        raise PermanentError("address rejected")
    elif isinstance(step, tuple) and step[0] == "defer":
        raise Deferral(step[1], "rate limited")
    if ctx.payload.get("write"):
        db.session.add(PeriodicJob(name=ctx.payload["write"]))
    return result


def new_op(key: str, *steps, run_at=None, now=T0, **payload) -> int:
    """Create and commit a scripted operation; return its id."""
    SCRIPTS[key] = list(steps)
    operation = operations.create_operation(NAME, payload, idempotency_key=key, run_at=run_at, now=now)
    db.session.commit()
    return operation.id
