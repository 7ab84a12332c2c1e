"""Redis, the doorbell's queue, goes away under load: first stopped (connections refused),
then frozen (SIGSTOP: connections accepted, never answered), while clients post purchases and
signed events to a real gunicorn. The queue here is a private ``redis-server`` on its own
port: the shared one on 6379 serves other tests.

Rings must fail fast (every request answered, none waits on the queue for long) and the
writes stand; once Redis is back, the reconciler rings everything that was missed and every
confirmation email reaches the SMTP server exactly once.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from sqlalchemy import func, select

from tests.conftest import Backend, inside, make_app
from tests.faults.intake import EMAIL, SECRET, finished, ready, states, work
from tests.support.load import Load, drive
from tests.support.polling import wait_for
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, Purchase
from webapp.services.access import tokens

CLIENTS = 4
PER_PHASE = 10  # requests sent in each phase (half events, half purchases)
# One ring to an unreachable or frozen queue may take at most this long, as timed by the server
# around the enqueue: the queue's timeout (1 s), with room for a loaded machine. A ring without
# a socket timeout would hang; one with redis-py's default retries (3, with backoff) takes 4 s+.
RING_BOUND = 3.0
# A whole request, as timed by this test's client threads: one ring plus the request's own work.
# Looser, because the client's clock also counts the time its own threads wait for a CPU on a
# machine shared with the rest of the suite; a request held by the queue would wait forever.
REQUEST_BOUND = 10.0
FAILED_RING = re.compile(r"could not enqueue operation \d+ after ([0-9.]+) s")
QUEUE_TIMEOUT = {"HUEY_TIMEOUT_SECONDS": "1"}


@pytest.fixture
def redis_backend(sqlite_backend, private_redis):
    """SQLite (a copy of the template) with RedisHuey on the private server."""
    backend = sqlite_backend
    name = f"q{uuid.uuid4().hex[:8]}"
    return Backend(backend.name, backend.database_url, private_redis.url, name, backend.tmp, dict(QUEUE_TIMEOUT))


def test_rings_fail_fast_while_redis_is_down_and_the_reconciler_delivers_everything_after(
    redis_backend, private_redis, start_gunicorn, start_worker, smtp_server
):
    backend = redis_backend
    app = make_app(backend)
    with inside(app):
        token = tokens.create_token("shop", "storefront").raw
        server = start_gunicorn(backend, workers=1, threads=CLIENTS, STRIPE_WEBHOOK_SECRET=SECRET)
        phases = {
            phase: work(server.url, token, events=PER_PHASE // 2, purchases=PER_PHASE // 2, prefix=f"{phase}-")
            for phase in ("up", "stopped", "frozen", "back")
        }
        worker = start_worker(backend, SMTP_URL=smtp_server.url, **EMAIL)
        ready(server, worker)
        loads = {phase: Load() for phase in phases}

        def send(phase: str) -> None:
            drive(loads[phase], phases[phase], clients=CLIENTS, deadline=time.monotonic() + 60)

        send("up")
        private_redis.stop()
        send("stopped")
        private_redis.start()
        private_redis.freeze()
        try:
            send("frozen")
        finally:
            private_redis.thaw()
        back = time.monotonic()
        back_at = utcnow()
        send("back")

        summary = {
            phase: {
                "requests": len(load.answers),
                "statuses": load.statuses(),
                "slowest_s": round(load.slowest(), 3),
            }
            for phase, load in loads.items()
        }
        failed_rings = [float(seconds) for seconds in FAILED_RING.findall(server.output())]
        print(
            "redis outage:",
            json.dumps({"phases": summary, "failed_rings": len(failed_rings), "slowest_ring_s": max(failed_rings)}),
        )

        # Every request was accepted at once, whatever the queue did.
        for phase, load in loads.items():
            assert set(load.accepted) == set(phases[phase]), (phase, load.statuses())
            assert all(200 <= a.status < 300 for a in load.answers), (phase, load.statuses())
        assert len(failed_rings) >= PER_PHASE  # the rings of the outage really failed (one per request)
        assert max(failed_rings) < RING_BOUND, failed_rings
        assert loads["stopped"].slowest() < REQUEST_BOUND and loads["frozen"].slowest() < REQUEST_BOUND, summary

        # After Redis returns, the reconciler rings what was missed: everything is done, each email once.
        total = len(phases) * PER_PHASE
        wait_for(lambda: finished(total), timeout=60, interval=0.2, message="every operation to finish")
        delivered_after = round(time.monotonic() - back, 2)
        first, last = _missed_runs(back_at)
        print("redis outage:", json.dumps({"all_done_after_s": delivered_after, "missed_ran_after_s": [first, last]}))
        assert worker.proc.poll() is None
        assert set(states()) == {"succeeded"}, states()
        purchases = db.session.execute(select(Purchase)).scalars().all()
        assert len(purchases) == total and {p.status for p in purchases} == {"completed"}
        received = smtp_server.received()
        message_ids = [str(r.message["Message-ID"]) for r in received]
        assert len(received) == total and len(set(message_ids)) == total
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(p.customer.email for p in purchases)
        db.session.rollback()


def _missed_runs(back_at) -> tuple[float | None, float | None]:
    """Seconds after Redis came back at which the first and the last operation created before
    then (their rings failed) started its first attempt: the reconciler's re-rings at work."""
    firsts = (
        select(func.min(OperationAttempt.started_at).label("started"))
        .join(Operation, Operation.id == OperationAttempt.operation_id)
        .where(Operation.created_at < back_at)
        .group_by(OperationAttempt.operation_id)
        .subquery()
    )
    started = db.session.execute(select(firsts.c.started).where(firsts.c.started >= back_at)).scalars().all()
    db.session.rollback()
    offsets = sorted((moment - back_at).total_seconds() for moment in started)
    return (round(offsets[0], 2), round(offsets[-1], 2)) if offsets else (None, None)
