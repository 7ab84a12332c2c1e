"""PostgreSQL goes away under load: every backend of the test's database is terminated and
new connections are refused for a few seconds, while clients post signed Stripe events and
storefront purchases to a real gunicorn and a real worker processes them.

Intake must answer 503 (never 500, never hang) while the database is gone and accept again by
itself once it is back; the worker and its periodic jobs must resume; nothing accepted may be
lost, and every confirmation email must reach the SMTP server exactly once.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import inside, make_app
from tests.faults.intake import AGAIN, EMAIL, SECRET, finished, ready, states, work
from tests.faults.outages import Outage
from tests.support.load import Load, drive
from tests.support.polling import wait_for
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun, Purchase
from webapp.services.access import tokens

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EVENTS, PURCHASES, CLIENTS = 30, 15, 4
OUTAGE_SECONDS = 3.0
START_AFTER = 10  # accepted requests before the database goes away
# Short leases and ladders: work caught mid-flight by the outage is recovered in seconds.
WORKER = {
    "OPERATION_LEASE_SECONDS": "3",
    "RECONCILE_LEASE_SECONDS": "3",
    "WEBHOOK_RETRY_LADDER": "200ms, 500ms, 1s, 1s, 1s",
    "EMAIL_RETRY_LADDER": "200ms, 500ms, 1s",
    **EMAIL,
}
# A request that died in the outage without releasing its Idempotency-Key leaves the key
# reserved; the next request with it takes it over after this long (by default 2 minutes).
WEB = {"STRIPE_WEBHOOK_SECRET": SECRET, "IDEMPOTENCY_ABANDONED_AFTER_SECONDS": "2"}


def test_intake_answers_503_while_postgres_is_gone_and_nothing_is_lost(
    postgres_backend, start_gunicorn, start_worker, smtp_server
):
    backend = postgres_backend
    app = make_app(backend)
    with inside(app):
        token = tokens.create_token("shop", "storefront").raw
        server = start_gunicorn(backend, workers=1, threads=CLIENTS, **WEB)
        items = work(server.url, token, events=EVENTS, purchases=PURCHASES)
        worker = start_worker(backend, SMTP_URL=smtp_server.url, **WORKER)
        ready(server, worker)
        db.session.remove()
        db.engine.dispose()  # the test's own connections would only be killed too

        load, outage = Load(), Outage(backend.database_url)

        def break_database():
            wait_for(lambda: len(load.accepted) >= START_AFTER, message="load to be under way")
            outage.run(OUTAGE_SECONDS)

        breaker = threading.Thread(target=break_database, name="outage")
        breaker.start()
        drive(load, items, clients=CLIENTS, deadline=time.monotonic() + 90, again=AGAIN)
        breaker.join(timeout=90)

        during = [a for a in load.answers if outage.started <= a.started and a.ended <= outage.ended]
        recovered_at = load.first_accepted_after(outage.ended)
        summary = {
            "requests": len(load.answers),
            "statuses": load.statuses(),
            "503_during_outage": sum(1 for a in during if a.status == 503),
            "terminated_backends": outage.terminated,
            "slowest_request_s": round(load.slowest(), 3),
            "recovery_s": round(recovered_at - outage.ended, 3) if recovered_at else None,
            "accepted": len(load.accepted),
        }
        print("postgres outage:", json.dumps(summary))

        # Every request was answered, none with a 5xx other than 503, none hung.
        assert load.given_up == [], load.given_up
        assert all(a.status == 503 or a.status < 500 for a in load.answers), load.statuses()
        assert not [a for a in load.answers if a.status == 0], [a.error for a in load.answers if a.status == 0][:3]
        assert load.slowest() < 10, load.slowest()
        assert summary["503_during_outage"] > 0 and outage.terminated > 0
        assert set(load.accepted) == set(items)
        assert recovered_at is not None and recovered_at - outage.ended < 10

        # The worker and its periodic jobs resumed: everything accepted is done, each email once.
        wait_for(lambda: finished(EVENTS + PURCHASES), timeout=60, interval=0.2, message="every operation to finish")
        assert worker.proc.poll() is None
        assert set(states()) == {"succeeded"}, states()
        outage_end = utcnow() - timedelta(seconds=time.monotonic() - outage.ended)
        wait_for(
            lambda: db.session.execute(
                select(JobRun.id).where(
                    JobRun.job_name == "reconciler", JobRun.started_at > outage_end, JobRun.outcome == "ok"
                )
            ).first(),
            message="a reconciler run after the outage",
        )
        purchases = db.session.execute(select(Purchase)).scalars().all()
        assert len(purchases) == EVENTS + PURCHASES  # no purchase twice, none missing
        assert {p.status for p in purchases} == {"completed"}
        assert all(body["status"] == "completed" for name, body in load.accepted.items() if "purchase" in name)
        received = smtp_server.received()
        message_ids = [str(r.message["Message-ID"]) for r in received]
        assert len(received) == EVENTS + PURCHASES and len(set(message_ids)) == len(message_ids)
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(p.customer.email for p in purchases)
        db.session.rollback()
