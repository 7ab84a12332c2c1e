"""The benchmarks' no-op handler, registered in worker processes by ``BACKSTOP_HANDLER_MODULES=bench.noop_handlers``."""

from __future__ import annotations

from webapp.services.engine.registry import handler

NOOP = "bench.noop"


@handler(NOOP, kind="job")
def noop(ctx):
    """Do nothing: the benchmarks measure the engine, not a handler."""
