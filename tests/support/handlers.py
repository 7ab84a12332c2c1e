"""Handlers used by the engine tests, imported by workers via BACKSTOP_HANDLER_MODULES.

Each records every call it receives in a file named by the payload, so the tests can count
real executions across processes.
"""

from __future__ import annotations

import time
from pathlib import Path

from webapp.domain.errors import PermanentError, TransientError
from webapp.domain.retry import RetryPolicy
from webapp.services.engine.registry import handler

LADDER = RetryPolicy.from_ladder("1s, 2s", max_attempts=3)


def record_call(ctx) -> None:
    """Append ``<operation id> <attempt>`` to the payload's log file."""
    log = ctx.payload.get("log")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{ctx.operation.id} {ctx.attempt}\n")


@handler("test.flaky", kind="job", policy=LADDER)
def flaky(ctx):
    """Fail with a transient error for the first ``fail_times`` attempts, then succeed."""
    record_call(ctx)
    if ctx.attempt <= ctx.payload.get("fail_times", 0):
        raise TransientError(f"flaky failure on attempt {ctx.attempt}")


@handler("test.permanent", kind="job", policy=LADDER)
def permanent(ctx):
    """Always fail permanently."""
    record_call(ctx)
    raise PermanentError("recipient address is invalid: nobody@invalid")


@handler("test.succeed", kind="job", policy=LADDER)
def succeed(ctx):
    """Succeed, noting the call."""
    record_call(ctx)


@handler("test.hang_first", kind="job", policy=LADDER, lease_seconds=3)
def hang_first(ctx):
    """On attempt 1, say so in a marker file and hang (to be killed); later attempts succeed."""
    record_call(ctx)
    if ctx.attempt == 1:
        Path(ctx.payload["marker"]).write_text("started")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise TransientError("hang_first was never killed")


@handler("test.block_until_released", kind="job", policy=LADDER)
def block_until_released(ctx):
    """Say so in the ``marker`` file, then wait (up to 60 s) for the ``release`` file; then succeed."""
    record_call(ctx)
    Path(ctx.payload["marker"]).write_text(f"attempt {ctx.attempt}")
    release = Path(ctx.payload["release"])
    deadline = time.monotonic() + 60
    while not release.exists():
        if time.monotonic() > deadline:
            raise TransientError("block_until_released was never released")
        time.sleep(0.02)
