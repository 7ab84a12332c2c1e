"""The SMTP relay refuses mail (451) for a while, with a worker sending a stream of emails.

Scaled down from "a minute" to a few seconds (``BACKSTOP_FAULT_SMTP_REFUSAL_SECONDS``, with the
circuit cool-down a third of it), in three steps: SMTP refuses while Postmark (a real HTTP
server standing in for its API) works → failover; then Postmark fails too → every circuit is
open and emails are deferred (no attempt spent) instead of failing; then both recover → every
email is sent, exactly once across the two providers, none dead-lettered; and once SMTP's circuit
has cooled down it carries mail again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

from sqlalchemy import func, select
from werkzeug import Request, Response

from tests.conftest import inside, make_app
from tests.faults.intake import worker_started
from tests.support.email import queue
from tests.support.polling import wait_for
from tests.support.smtp import ACCEPT, TEMPORARY
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import EmailLog, EmailProviderCircuit, Operation, OperationAttempt

REFUSAL_SECONDS = float(os.environ.get("BACKSTOP_FAULT_SMTP_REFUSAL_SECONDS", "4"))
PER_STEP = 10  # emails queued in each step
WORKER = {
    "EMAIL_PROVIDERS": "smtp,postmark",
    "POSTMARK_SERVER_TOKEN": "pm-token",
    "EMAIL_FROM": "Shop <noreply@shop.example>",
    "EMAIL_CIRCUIT_THRESHOLD": "3",
    "EMAIL_CIRCUIT_COOLDOWN_SECONDS": str(REFUSAL_SECONDS / 3),
    # Eight retries: only a lost half-open probe spends one while every circuit is open.
    "EMAIL_RETRY_LADDER": "200ms, 500ms, 1s, 1s, 1s, 1s, 1s, 1s",
    "EMAIL_RATE_PER_RECIPIENT_PER_MINUTE": "0",
    "EMAIL_RATE_GLOBAL_PER_MINUTE": "0",
}


class Postmark:
    """Postmark's ``POST /email`` on a real HTTP server: accepts (recording the Message-ID) or answers 503."""

    def __init__(self, httpserver):
        self.up = True
        self.accepted: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        httpserver.expect_request("/postmark/email", method="POST").respond_with_handler(self.handle)
        self.base = httpserver.url_for("/postmark")

    def handle(self, request: Request) -> Response:
        """Answer one send."""
        body = json.loads(request.data)
        [message_id] = [h["Value"] for h in body["Headers"] if h["Name"] == "Message-ID"]
        with self._lock:
            if not self.up:
                self.refused += 1
                return Response('{"ErrorCode": 100, "Message": "maintenance"}', status=503)
            self.accepted.append(message_id)
            answer = {"To": body["To"], "MessageID": f"pm-{len(self.accepted)}", "ErrorCode": 0, "Message": "OK"}
        return Response(json.dumps(answer), content_type="application/json")


def _queue(step: str) -> list[int]:
    return [queue("welcome", f"{step}-{n}@example.com", key=f"{step}-{uuid.uuid4().hex}") for n in range(PER_STEP)]


def _count(query) -> int:
    value = db.session.execute(query).scalar_one()
    db.session.rollback()
    return value


def _states(ids: list[int]) -> dict[str, int]:
    rows = db.session.execute(
        select(Operation.state, func.count()).where(Operation.id.in_(ids)).group_by(Operation.state)
    ).all()
    db.session.rollback()
    return dict(rows)


def _sent(ids: list[int]) -> bool:
    return _states(ids) == {"succeeded": len(ids)}


def _deferred(ids: list[int]) -> int:
    return _count(
        select(func.count())
        .select_from(OperationAttempt)
        .where(OperationAttempt.operation_id.in_(ids), OperationAttempt.outcome == "deferred")
    )


def _smtp_circuit() -> tuple[int, object]:
    circuit = db.session.get(EmailProviderCircuit, "smtp")
    state = (circuit.consecutive_failures, circuit.opened_until)
    db.session.rollback()
    return state


def _open_circuits() -> int:
    return _count(
        select(func.count()).select_from(EmailProviderCircuit).where(EmailProviderCircuit.opened_until > utcnow())
    )


def test_smtp_refusing_fails_over_then_defers_then_every_email_is_sent_once(
    sqlite_backend, start_worker, smtp_server, httpserver
):
    postmark = Postmark(httpserver)
    app = make_app(sqlite_backend)
    with inside(app):
        worker = start_worker(sqlite_backend, SMTP_URL=smtp_server.url, POSTMARK_API_BASE=postmark.base, **WORKER)
        worker_started(worker)

        # SMTP refuses; Postmark takes the mail.
        refusal_started = time.monotonic()
        smtp_server.set_mode(TEMPORARY)
        failover = _queue("failover")
        wait_for(lambda: _sent(failover), message="the failover emails to be sent")

        # Postmark fails too: every circuit opens and emails wait instead of failing.
        postmark.up = False
        deferred = _queue("deferred")
        wait_for(lambda: _open_circuits() == 2 and _deferred(deferred) > 0, message="every circuit open, deferrals")
        time.sleep(max(0.0, REFUSAL_SECONDS - (time.monotonic() - refusal_started)))  # the rest of the outage
        assert _count(select(func.count()).select_from(Operation).where(Operation.state == "succeeded")) == PER_STEP
        refusal = time.monotonic() - refusal_started

        # Both recover.
        smtp_server.set_mode(ACCEPT)
        postmark.up = True
        recovered = time.monotonic()
        everything = failover + deferred
        wait_for(lambda: _sent(everything), timeout=60, message="every email to be sent")
        drained = time.monotonic() - recovered

        # Which provider took the backlog depends on whose cool-down lapsed first. Once SMTP's
        # has lapsed, the first provider carries mail again and its circuit closes.
        wait_for(lambda: _open_circuits() == 0, message="SMTP's circuit to cool down")
        after = _queue("after")
        wait_for(lambda: _sent(after), message="the emails after recovery to be sent")
        everything += after

        attempts = dict(
            db.session.execute(
                select(OperationAttempt.outcome, func.count())
                .where(OperationAttempt.operation_id.in_(everything))
                .group_by(OperationAttempt.outcome)
            ).all()
        )
        tries = {
            f"{provider}:{status}": count
            for provider, status, count in db.session.execute(
                select(EmailLog.provider, EmailLog.status, func.count()).group_by(EmailLog.provider, EmailLog.status)
            ).all()
        }
        most_attempts = _count(select(func.max(Operation.attempts)).where(Operation.id.in_(everything)))
        smtp_ids = [str(r.message["Message-ID"]) for r in smtp_server.received()]
        summary = {
            "emails": len(everything),
            "refusal_s": round(refusal, 1),
            "smtp_refusals": len(smtp_server.offered) - len(smtp_ids),
            "postmark_refusals": postmark.refused,
            "sent_by": {"smtp": len(smtp_ids), "postmark": len(postmark.accepted)},
            "attempts": attempts,
            "provider_tries": tries,
            "most_attempts": most_attempts,
            "drained_after_recovery_s": round(drained, 2),
        }
        print("smtp outage:", json.dumps(summary))

        # Every email exactly once, across both providers; none dead; deferrals spent no attempt.
        delivered = smtp_ids + postmark.accepted
        assert len(delivered) == len(everything) and len(set(delivered)) == len(everything), summary
        assert len(postmark.accepted) >= PER_STEP, summary
        assert any(str(r.message["To"]).startswith("after-") for r in smtp_server.received()), summary
        assert _smtp_circuit() == (0, None), summary
        assert summary["smtp_refusals"] > 0 and postmark.refused > 0, summary
        assert attempts.get("deferred", 0) > 0 and "dead" not in attempts, summary
        assert tries.get("smtp:skipped", 0) > 0  # the open SMTP circuit was skipped, not hammered
        assert most_attempts <= 4, summary
        assert worker.proc.poll() is None
