"""/metrics under real gunicorn with several workers, and what real processes write to their logs."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.support import stripe_signing
from tests.support.gunicorn import WORKERS, Gunicorn
from tests.support.monitoring import T0, create, create_and_run, later, run_at
from tests.support.polling import wait_for
from webapp.devdata import stripe_samples
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt, StripeEvent, WebhookRejection

COUNTERS = ("created", "succeeded", "failed", "dead_lettered")
SECRET_KEY = "sk_test_" + "A1b2C3d4E5f6G7h8" * 2
WEBHOOK_SECRET = "whsec_" + "Z9y8X7w6V5u4T3s2" * 2
CANARY = "canary-" + uuid.uuid4().hex  # a payload value no log line may carry
# Stripe's test card; the whole number, as "4242" alone turns up in pids and ports of the logs.
CARD = "4242424242424242"


def parse(text: str) -> dict:
    """``{(sample name, frozenset(labels)): value}`` parsed by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_concurrently(server: Gunicorn, count: int) -> list[tuple[str, dict]]:
    """``count`` simultaneous scrapes (sync workers take one each); ``[(worker pid, samples)]``."""
    probes = [uuid.uuid4().hex for _ in range(count)]

    def get(probe):
        response = requests.get(f"{server.url}/metrics", params={"probe": probe}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        return parse(response.text)

    with ThreadPoolExecutor(count) as pool:
        bodies = list(pool.map(get, probes))
    pids = [wait_for(lambda p=probe: server.answered_by(p), message="the access log line") for probe in probes]
    return list(zip(pids, bodies, strict=True))


def expected_from_database() -> dict:
    """The counters and gauges /metrics must show, counted here straight from the tables."""
    expected = {}
    for kind, name in db.session.execute(select(Operation.kind, Operation.name).distinct()).all():
        labels = frozenset({("kind", kind), ("name", name)})
        ops = select(func.count()).select_from(Operation).where(Operation.name == name)
        attempts = (
            select(func.count())
            .select_from(OperationAttempt)
            .join(Operation, Operation.id == OperationAttempt.operation_id)
            .where(Operation.name == name)
        )
        expected[("backstop_operations_created_total", labels)] = db.session.execute(ops).scalar_one()
        expected[("backstop_operations_succeeded_total", labels)] = db.session.execute(
            ops.where(Operation.state == "succeeded")
        ).scalar_one()
        expected[("backstop_operations_failed_total", labels)] = db.session.execute(
            attempts.where(OperationAttempt.outcome.in_(["failed", "dead", "crashed"]))
        ).scalar_one()
        expected[("backstop_operations_dead_lettered_total", labels)] = db.session.execute(
            attempts.where(OperationAttempt.outcome == "dead")
        ).scalar_one()
    for kind, count in db.session.execute(
        select(Operation.kind, func.count())
        .where(Operation.state == "dead", Operation.resolved_at.is_(None))
        .group_by(Operation.kind)
    ).all():
        expected[("backstop_dead_letters_unresolved", frozenset({("kind", kind)}))] = count
    for state, count in db.session.execute(select(Operation.state, func.count()).group_by(Operation.state)).all():
        expected[("backstop_operations", frozenset({("state", state)}))] = count
    for reason, count in db.session.execute(select(WebhookRejection.reason, WebhookRejection.count)).all():
        expected[("backstop_webhook_deliveries_rejected_total", frozenset({("reason", reason)}))] = count
    for event_type, count in db.session.execute(
        select(StripeEvent.type, func.count()).group_by(StripeEvent.type)
    ).all():
        expected[("backstop_webhook_events_accepted_total", frozenset({("type", event_type)}))] = count
    expected[("backstop_operation_attempt_duration_seconds_count", frozenset({("kind", "email")}))] = (
        db.session.execute(
            select(func.count())
            .select_from(OperationAttempt)
            .join(Operation)
            .where(Operation.kind == "email", OperationAttempt.duration_ms.is_not(None))
        ).scalar_one()
    )
    db.session.rollback()
    return expected


def assert_every_worker_agrees_with_the_database(server: Gunicorn, deadline: float = 60.0) -> set[str]:
    """Scrape concurrently, round after round, until two workers or more have answered.

    Every answer must equal the database. Returns the pids that answered. (A worker still
    importing the app answers nothing yet, so the first rounds may all land on one worker.)
    """
    expected = expected_from_database()
    answered: set[str] = set()
    started = time.monotonic()
    while len(answered) < 2:
        assert time.monotonic() - started < deadline, f"only worker(s) {answered} answered"
        for pid, samples in scrape_concurrently(server, 2 * WORKERS):
            answered.add(pid)
            shown = {key: samples.get(key) for key in expected}
            assert shown == expected, f"worker {pid} disagrees with the database"
            # No series beyond the database's: a counter for a name the database never saw is wrong too.
            counters = {f"backstop_operations_{c}_total" for c in COUNTERS}
            extra = {key for key in samples if key[0] in counters} - set(expected)
            assert not extra, f"worker {pid} shows series the database does not have: {extra}"
    return answered


def post_bad_signature(server: Gunicorn, count: int) -> None:
    """``count`` webhook deliveries with a wrong signature, sent at once (several workers count them)."""

    def post(_):
        response = requests.post(
            f"{server.url}/webhooks/stripe",
            data=b'{"id": "evt_x"}',
            timeout=60,
            headers={"Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(post, range(count)))


def test_metrics_match_the_database_whichever_gunicorn_worker_answers(app, backend, start_gunicorn):
    create_and_run("test.email_ok", "ok-1", T0)
    create_and_run("test.email_bounce", "bounce-1", T0)  # dead, and its alert operation waits
    flaky = create_and_run("test.flaky", "flaky-1", T0, fail_times=1)
    run_at(flaky, later(5))
    server = start_gunicorn(backend, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)

    post_bad_signature(server, 5)  # counted by whichever workers took them
    first = assert_every_worker_agrees_with_the_database(server)

    # The database moves on (this process writes; the workers only read): every worker follows.
    for i in range(3):
        create_and_run("test.email_ok", f"ok-more-{i}", later(10))
    create("test.succeed", "waiting-1", utcnow() - timedelta(seconds=5))
    post_bad_signature(server, 4)
    second = assert_every_worker_agrees_with_the_database(server)

    assert len(first) >= 2 and len(second) >= 2  # several workers answered, every one the same


def _signed_event(*, email: str) -> tuple[bytes, str]:
    event = stripe_samples.build_event(
        "checkout.session.completed", stripe_samples.PurchaseFacts(purchase_id=None, email=email)
    )
    event["data"]["object"]["metadata"] = {"note": CANARY, "card_last4_and_cvc": f"{CARD} {CANARY}"}
    body = stripe_signing.body_of(event).encode()
    return body, stripe_signing.header(body, WEBHOOK_SECRET)


def test_real_processes_log_json_per_attempt_without_secrets_or_payloads(
    sqlite_app, sqlite_backend, start_gunicorn, start_worker
):
    backend = sqlite_backend
    secrets = {
        "LOG_FORMAT": "json",
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:9/services/T0/B0/{CANARY}-slack",
    }
    server = start_gunicorn(backend, workers=1, **secrets)
    body, signature = _signed_event(email=f"{CANARY}@example.com")
    assert (
        requests.post(
            f"{server.url}/webhooks/stripe", data=body, timeout=60, headers={"Stripe-Signature": signature}
        ).status_code
        == 200
    )
    tampered = body.replace(b"checkout.session", b"checkout.sessionX")
    assert (
        requests.post(
            f"{server.url}/webhooks/stripe", data=tampered, timeout=60, headers={"Stripe-Signature": signature}
        ).status_code
        == 400
    )
    held = create("test.permanent", "secret-payload", payload_secret=CANARY, api_key=SECRET_KEY)
    worker = start_worker(backend, **secrets)

    def finished():
        states = db.session.execute(select(Operation.state).where(Operation.kind != "alert")).scalars().all()
        db.session.rollback()
        return len(states) == 2 and set(states) <= {"succeeded", "dead"}

    wait_for(finished, timeout=60, message="the event and the operation to finish")
    server.stop()
    worker.stop()

    logs = server.output() + worker.output()
    for secret in (CANARY, SECRET_KEY, WEBHOOK_SECRET, CARD):
        assert secret not in logs, f"{secret[:12]}... leaked into the logs"
    entries = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    attempts = [e for e in entries if e["logger"] == "backstop.engine"]
    assert {(e["operation_name"], e["outcome"]) for e in attempts} >= {
        ("stripe.checkout.session.completed", "succeeded"),
        ("test.permanent", "dead"),
    }
    [dead] = [e for e in attempts if e["operation_id"] == held]
    assert dead["attempt"] == 1 and isinstance(dead["duration_ms"], int) and dead["level"] == "info"
    assert dead["error_class"] == "webapp.domain.errors.PermanentError"
    rejected = [
        json.loads(line) for line in server.output().splitlines() if line.startswith("{") and "rejected" in line
    ]
    assert rejected and rejected[0]["logger"] == "backstop.webhooks"


def test_exception_tracebacks_are_redacted_in_json_and_text_logs():
    from webapp.logs import JsonFormatter, RedactingFilter

    streams = {"json": io.StringIO(), "text": io.StringIO()}
    logger = logging.getLogger("backstop.test.redaction")
    handlers = []
    for fmt, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(message)s"))
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        handlers.append(handler)
    try:
        try:
            raise ConnectionError(
                f"POST https://hooks.slack.com/services/T0/B0/{CANARY} failed; key {SECRET_KEY}; "
                f"db postgresql+psycopg://backstop:{CANARY}@db/backstop"
            )
        except ConnectionError:
            logger.exception("periodic job %s failed", "checks")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)

    for fmt, stream in streams.items():
        text = stream.getvalue()
        assert "ConnectionError" in text and "Traceback" in text, fmt  # the traceback is still there
        assert CANARY not in text and SECRET_KEY not in text, f"{fmt}: {text}"
    entry = json.loads(streams["json"].getvalue())
    assert "[redacted]" in entry["exc"] and entry["message"] == "periodic job checks failed"


FRAGMENTS = [
    "Bearer ",
    "bearer\t",
    "sk_live_",
    "rk_test_",
    "whsec_",
    "pk_",
    "xsk_",
    "password",
    "Secret",
    "TOKEN",
    "api-key",
    "apikey",
    " = ",
    ":",
    "://",
    "postgresql://u:",
    "redis://:pw@h",
    "@",
    "https://hooks.slack.com/",
    "https://hooks.slack.com/services/T0",
    "A1b2C3d4E5",
    "evt_1",
    " ",
    ",",
    "/",
]


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=12).map("".join))
@example("Authorization: Bearer abc.def")
@example("key sk_live_A1b2C3d4E5 and whsec_A1b2C3d4E5")
@example("api_key=abc password: x")
@example("db postgresql+psycopg://backstop:pw@db/backstop and redis://:pw@h")
@example("POST https://hooks.slack.com/services/T0/B0/x failed")
def test_the_quick_look_for_secrets_never_lets_one_through(text):
    from webapp.logs import SECRET_TEXT, redact_text

    every_pattern = text
    for pattern, replacement in SECRET_TEXT:
        every_pattern = pattern.sub(replacement, every_pattern)

    assert redact_text(text) == every_pattern
