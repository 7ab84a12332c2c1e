"""The send rate limit holds across real OS processes sending at once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
from datetime import datetime, timedelta

import pytest

from webapp.domain.errors import Deferral

NOW = datetime(2030, 1, 1, 12, 0, 0)  # fixed: the window does not move while the processes race
PROCESSES = 4
TRIES = 12  # per process and phase: 48 tries for 25 sends
LIMIT = 25


def _race(config: dict, barrier, results) -> None:
    """One process: tries to send to one recipient, then to many, each phase started with the others."""
    from webapp import create_app
    from webapp.extensions import db
    from webapp.services.email import ratelimit

    outcomes = {"recipient": 0, "global": 0, "deferred": 0, "errors": []}
    app = create_app(config)
    with app.app_context():
        for phase, at in (("recipient", NOW), ("global", NOW + timedelta(hours=1))):
            barrier.wait(60)
            for n in range(TRIES):
                # Phase 1: one recipient whose limit binds. Phase 2: distinct recipients, the global limit binds.
                address = "race@example.com" if phase == "recipient" else f"r{os.getpid()}-{n}@example.com"
                per_recipient, global_limit = (LIMIT, 1000) if phase == "recipient" else (1000, LIMIT)
                try:
                    ratelimit.reserve(address, now=at, per_recipient=per_recipient, global_limit=global_limit)
                    outcomes[phase] += 1
                except Deferral:
                    outcomes["deferred"] += 1
                except Exception as exc:  # reported to the test, which fails on any
                    outcomes["errors"].append(repr(exc))
        db.session.remove()
        db.engine.dispose()
    results.put(outcomes)


def test_processes_sending_at_once_never_exceed_the_limit(backend, app):
    # Fresh interpreters (no state inherited from the test process), forked from one server that
    # imported the app once: starting four of them costs one import, not four.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["webapp", "webapp.services.email.ratelimit"])
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    config = backend.config()
    processes = [context.Process(target=_race, args=(config, barrier, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()

    assert [error for outcome in outcomes for error in outcome["errors"]] == []
    assert sum(outcome["recipient"] for outcome in outcomes) == LIMIT
    assert sum(outcome["global"] for outcome in outcomes) == LIMIT
    assert sum(outcome["deferred"] for outcome in outcomes) == 2 * (PROCESSES * TRIES - LIMIT)
    from webapp.services.email import ratelimit

    assert ratelimit.sends_in_use("race@example.com", NOW, LIMIT) == LIMIT
    assert ratelimit.sends_in_use(None, NOW + timedelta(hours=1), LIMIT) == LIMIT


@pytest.fixture
def app(backend):
    """The migrated database of ``backend``, for reading what the processes left."""
    from tests.conftest import inside, make_app

    app = make_app(backend)
    with inside(app):
        yield app
