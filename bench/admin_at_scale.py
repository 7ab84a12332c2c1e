"""The admin console's queries against a million operations (SQLite or PostgreSQL).

Fills a fresh database with ``--ops`` operations over 30 days (3 % dead-lettered, a quarter
of those resolved, 40 error fingerprints, four kinds, a dozen names), runs ANALYZE, then
times each query the console runs: list pages (first and deep, by filter), the Issues
grouping, the stat cards, the health cards, the per-name breakdown and a text search.

    .venv/bin/python bench/admin_at_scale.py [--ops 1000000] [--postgres] [--keep | --reuse URL]

Then it times each console page through the app (logged in, ``--runs`` requests each, p50 /
p95 / max); pages this build lacks (404) are skipped with a note. A million rows take minutes
to write: ``--keep --fill-only`` once, then ``--reuse URL`` for every timing run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate
from sqlalchemy import delete, func, select, text

from tests.support import servers
from webapp import create_app
from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer, Operation, OperationHourRollup, Purchase, StripeEvent
from webapp.services.console.failures import dead_letter_stats, list_operations
from webapp.services.console.filters import Filters, count_matching
from webapp.services.console.issues import group_failures
from webapp.services.monitoring import health_page, hourly

NAMES = {
    "email": ["email.welcome", "email.lead_purchase_confirmation", "email.refund_notification", "email.payment_failed"],
    "webhook": ["stripe.checkout.session.completed", "stripe.charge.refunded", "stripe.payment_intent.failed"],
    "job": ["admin.bulk_retry", "job.cleanup", "job.report"],
    "alert": ["alert.slack", "alert.email"],
}
KIND_WEIGHTS = {"email": 0.55, "webhook": 0.35, "job": 0.08, "alert": 0.02}
ERRORS = [
    ("SMTPError", "421 busy, try again in {n}s"),
    ("TransientError", "Connection refused by 10.0.{n}.1"),
    ("PermanentError", "550 5.1.1 <user{n}@example.com>: mailbox unavailable"),
    ("TimeoutError", "read timed out after {n} ms"),
] + [("ProviderError", f"provider error type {k} on request req_{{n}}") for k in range(36)]


def fill(count: int, url: str, seed: int = 7) -> None:
    """Write ``count`` operations, their attempts and the records around them through the raw driver.

    Operations are created over 30 days in id order (as they are in production). Around them:
    a customer per ten operations, a purchase per four (emails and webhooks name one in their
    subject, as the intake and the outbox do), a stored Stripe event per webhook operation and an
    audit entry per resolved dead letter, so the explorer, event log, customer and audit pages
    read tables of a realistic size. Plain tuples through ``executemany`` (SQLite) or ``COPY``
    (PostgreSQL): a million operations take a minute or two, not the ORM's 45.
    """
    rng = random.Random(seed)
    now = utcnow()
    start = now - timedelta(days=30)
    customers = max(count // 10, 1)
    purchases = max(count // 4, 1)
    with _raw(url) as writer:
        writer(
            "products",
            ("id", "sku", "name", "kind", "price_cents", "currency", "credit_cents_granted", "active", "created_at"),
            [(1, "bench-lead", "Bench lead", "lead", 4900, "usd", 0, True, start)],
        )
        writer(
            "customers",
            ("id", "email", "name", "credit_balance_cents", "created_at"),
            (
                (c, f"user{c}@example.com", f"{rng.choice(FIRST)} {rng.choice(LAST)} {c}", 0, start)
                for c in range(1, customers + 1)
            ),
        )
        writer(
            "purchases",
            PURCHASE_COLUMNS,
            (
                (
                    p,
                    1 + p % customers,
                    1,
                    "card",
                    "completed",
                    4900,
                    "usd",
                    0,
                    f"cs_bench_{p}",
                    f"pi_bench_{p}",
                    "sent",
                    start,
                    start,
                )
                for p in range(1, purchases + 1)
            ),
        )
        operations, attempts, events, audit = _operation_rows(rng, count, now, customers, purchases)
        writer("operations", OPERATION_COLUMNS, operations)
        writer("operation_attempts", ATTEMPT_COLUMNS, attempts)
        writer("stripe_events", EVENT_COLUMNS, events)
        writer("audit_log", AUDIT_COLUMNS, audit)


FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Frances", "Dennis"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Torvalds", "Allen"]
PURCHASE_COLUMNS = (
    "id",
    "customer_id",
    "product_id",
    "payment_method",
    "status",
    "amount_cents",
    "currency",
    "refunded_cents",
    "stripe_checkout_session_id",
    "stripe_payment_intent_id",
    "fulfilment_status",
    "created_at",
    "updated_at",
)
OPERATION_COLUMNS = (
    "id",
    "kind",
    "name",
    "payload",
    "idempotency_key",
    "subject",
    "state",
    "attempts",
    "max_attempts",
    "next_attempt_at",
    "error_class",
    "error_message",
    "error_fingerprint",
    "succeeded_at",
    "dead_at",
    "resolved_at",
    "resolved_by",
    "created_at",
    "updated_at",
)
ATTEMPT_COLUMNS = ("operation_id", "number", "started_at", "finished_at", "duration_ms", "outcome")
EVENT_COLUMNS = (
    "id",
    "type",
    "livemode",
    "object_id",
    "payload",
    "received_at",
    "processing_state",
    "operation_id",
    "processed_at",
)
AUDIT_COLUMNS = ("created_at", "actor", "action", "target_type", "target_id", "note", "address")


def _operation_rows(rng, count, now, customers, purchases):
    """Operations in id order, with their attempts, Stripe events and audit entries (four lists of tuples)."""
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    seconds = sorted(rng.uniform(0, 30 * 86400) for _ in range(count))
    start = now - timedelta(days=30)
    operations, attempts, events, audit = [], [], [], []
    for n in range(count):
        op_id = n + 1
        kind = rng.choices(kinds, weights)[0]
        name = rng.choice(NAMES[kind])
        created = start + timedelta(seconds=seconds[n])
        purchase = rng.randint(1, purchases)
        to = f"user{1 + purchase % customers}@example.com"
        key, subject, payload = f"bench-{n}", None, {"to": to}
        if kind == "email":
            subject, payload = f"purchase:{purchase}", {"to": to, "purchase_id": purchase}
        elif kind == "webhook":
            event_id = f"evt_bench_{n}"
            key, subject, payload = f"stripe-event:{event_id}", f"purchase:{purchase}", {"event_id": event_id}
        state, tries, next_at = "succeeded", 1, created
        error = (None, None, None)
        succeeded = dead = resolved = resolved_by = None
        roll = rng.random()
        if roll < 0.03:
            error_class, template = rng.choice(ERRORS)
            message = template.format(n=rng.randint(1, 99999))
            state, tries, dead = "dead", 4, created + timedelta(minutes=5)
            error = (error_class, message, fingerprint_of(error_class, message))
            if rng.random() < 0.25:
                resolved, resolved_by = created + timedelta(hours=2), "ops@example.com"
                audit.append((resolved, resolved_by, "operation.resolve", "operation", str(op_id), None, "127.0.0.1"))
        elif roll < 0.032:
            state, tries, next_at = "retrying", 2, now + timedelta(seconds=rng.uniform(-60, 600))
        else:
            succeeded, tries = created + timedelta(seconds=2), 1 if roll < 0.95 else 2
        updated = succeeded or dead or created
        operations.append(
            (
                op_id,
                kind,
                name,
                json.dumps(payload),
                key,
                subject,
                state,
                tries,
                4,
                next_at,
                *error,
                succeeded,
                dead,
                resolved,
                resolved_by,
                created,
                updated,
            )
        )
        last = {"succeeded": "succeeded", "dead": "dead"}.get(state, "failed")
        for number in range(1, tries + 1):
            started = created + timedelta(seconds=number - 1)
            outcome = last if number == tries else "failed"
            attempts.append((op_id, number, started, started + timedelta(milliseconds=120), 120, outcome))
        if kind == "webhook":
            body = json.dumps(
                {
                    "id": key.removeprefix("stripe-event:"),
                    "type": name.removeprefix("stripe."),
                    "data": {"object": {"id": f"cs_bench_{purchase}", "metadata": {"purchase_id": str(purchase)}}},
                }
            )
            events.append(
                (
                    key.removeprefix("stripe-event:"),
                    name.removeprefix("stripe."),
                    False,
                    f"cs_bench_{purchase}",
                    body,
                    created,
                    {"succeeded": "processed", "dead": "failed"}.get(state, "received"),
                    op_id,
                    succeeded,
                )
            )
    return operations, attempts, events, audit


@contextlib.contextmanager
def _raw(url: str):
    """A writer of (table, columns, rows) through the driver itself, committed at the end."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")

        def write(table, columns, rows):
            marks = ", ".join("?" for _ in columns)
            connection.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", (_sqlite_row(row) for row in rows)
            )

        try:
            yield write
            connection.execute("COMMIT")
        finally:
            connection.close()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:

        def write(table, columns, rows):
            with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

        yield write
        for table in ("operations", "operation_attempts", "customers", "purchases", "products", "audit_log"):
            connection.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")


def _sqlite_row(row: tuple) -> tuple:
    """Datetimes as SQLAlchemy stores them on SQLite (always with microseconds, so text order is time order)."""
    return tuple(
        value.isoformat(sep=" ", timespec="microseconds") if isinstance(value, datetime) else value for value in row
    )


BASELINE = {"seconds": None}


def best_of(call, repeat: int = 3) -> float:
    """The best of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        db.session.rollback()
    return best


def measure_baseline() -> None:
    """Baseline, measured in the same run: one pass over every operation row (what any
    query without a usable index costs), here a count of dead rows with no index help."""
    seconds = best_of(
        lambda: db.session.execute(
            text("SELECT count(*) FROM operations WHERE attempts + 0 >= 0 AND state || '' = 'dead'")
        ).scalar_one()
    )
    BASELINE["seconds"] = seconds
    print(f"{'baseline: full scan of operations':<48} {seconds * 1000:9.1f} ms   1.000x")


def timed(label: str, call, repeat: int = 3) -> None:
    """Print the best of ``repeat`` runs and its ratio to the full-scan baseline."""
    best = best_of(call, repeat)
    print(f"{label:<48} {best * 1000:9.1f} ms   {best / BASELINE['seconds']:.3f}x")


def deep_cursor(filters: Filters, pages: int = 20) -> str | None:
    """The cursor of page ``pages`` (walked, so the timing below is a real deep page)."""
    cursor = None
    for _ in range(pages):
        page = list_operations(filters, cursor=cursor, limit=50)
        cursor = page.next_cursor or cursor
    return cursor


# The console's pages, timed through the app (login, query, template) as a browser would ask
# for them. Add a row per new page; a route this build does not have (404) is skipped with a
# note, so pages other branches add can be listed before they are merged.
PAGES: list[tuple[str, str]] = [
    ("failed operations", "/admin/failed-operations"),
    ("failed operations, kind=alert, all", "/admin/failed-operations?status=all&kind=alert"),
    ("failed operations, search", "/admin/failed-operations?q=user4242@"),
    ("failed operations, search a common word", "/admin/failed-operations?q=provider%20error"),
    ("failed operations, search every customer's domain", "/admin/failed-operations?q=example.com"),
    ("stat cards partial", "/admin/partials/stats"),
    ("issues, unresolved", "/admin/issues"),
    ("issues, all", "/admin/issues?status=all"),
    ("health 1h", "/admin/operations-health?window=1h"),
    ("health 24h", "/admin/operations-health?window=24h"),
    ("health 7d", "/admin/operations-health?window=7d"),
    ("health cards partial 7d", "/admin/partials/health/cards?window=7d"),
    ("health breakdown partial 7d", "/admin/partials/health/breakdown?window=7d"),
    ("health trend partial 7d", "/admin/partials/health/trend?window=7d"),
    ("explorer, state=succeeded", "/admin/operations?state=succeeded"),
    ("explorer, search customer email", "/admin/operations?q=user4242@example.com"),
    ("explorer, search idempotency key", "/admin/operations?q=bench-4242"),
    ("stripe events", "/admin/stripe-events"),
    ("customers", "/admin/customers"),
    ("customers, search email", "/admin/customers?q=user4242@example.com"),
    ("audit log", "/admin/audit"),
    ("audit log, action=operation.resolve", "/admin/audit?action=operation.resolve"),
    ("health status partial", "/admin/partials/health/status"),
    ("explorer, state=dead, kind=email", "/admin/operations?state=dead&kind=email"),
    ("explorer, search customer name", "/admin/operations?q=Hopper"),
    ("explorer, search error text (7 d)", "/admin/operations?search=error&q=mailbox"),
    ("operation permalink", "/admin/operations/{operation_id}"),
    ("operation details partial", "/admin/partials/operations/{operation_id}/details"),
    ("stripe events, search event id", "/admin/stripe-events?q={event_id}"),
    ("stripe event", "/admin/stripe-events/{event_id}"),
    ("customers, search name", "/admin/customers?q=grace"),
    ("customer page", "/admin/customers/{customer_id}"),
    ("purchase page", "/admin/purchases/{purchase_id}"),
]
BENCH_ADMIN = ("bench-admin@example.com", "bench admin password 1")


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def time_pages(app, runs: int, only: list[str] | None = None) -> None:
    """p50 / p95 / max of ``runs`` requests per page, logged in as an admin (with ``only``: the
    pages whose label contains one of its texts)."""
    from webapp.services.console import admins

    with app.app_context():
        try:
            admins.create_admin(*BENCH_ADMIN)
        except Exception:  # already there from a kept run
            db.session.rollback()
        db.session.remove()
    client = app.test_client()
    page = client.get("/admin/login").text
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
    response = client.post(
        "/admin/login", data={"email": BENCH_ADMIN[0], "password": BENCH_ADMIN[1], "csrf_token": token}
    )
    assert response.status_code == 302, f"bench login failed: {response.status_code}"
    print(f"\n{'page (through the app, ' + str(runs) + ' runs)':<48} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    with app.app_context():
        # Rows from the middle of each table (the fill's ids are contiguous), for the detail pages.
        ids = {
            f"{name}_id": str((db.session.execute(select(func.max(model.id))).scalar() or 0) // 2)
            for name, model in (("operation", Operation), ("customer", Customer), ("purchase", Purchase))
        }
        ids["event_id"] = db.session.execute(
            select(StripeEvent.id).order_by(StripeEvent.received_at).offset(1000).limit(1)
        ).scalar()
        db.session.remove()
    for label, url in PAGES:
        if only and not any(text in label for text in only):
            continue
        missing = [key for key, value in ids.items() if "{" + key + "}" in url and value in (None, "0")]
        if missing:
            print(f"{label:<48} skipped: no row for {missing[0]}")
            continue
        url = url.format(**ids) if "{" in url else url
        first = client.get(url)
        if first.status_code == 404:
            print(f"{label:<48} skipped: {url} answers 404 in this build")
            continue
        assert first.status_code == 200, f"{url} answered {first.status_code}"
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            client.get(url)
            samples.append(time.perf_counter() - start)
        p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
        flag = "" if p95 <= 0.1 else "   over 100 ms"
        print(f"{label:<48} {p50 * 1000:9.1f} {p95 * 1000:9.1f} {max(samples) * 1000:9.1f}{flag}")


def time_queries(app) -> None:
    """The console's queries one by one (best of three), against the full-scan baseline."""
    with app.app_context():
        measure_baseline()
        for label, filters in (
            ("unresolved", Filters()),
            ("kind=alert, all", Filters(status="all", kind="alert")),
            ("name=email.welcome", Filters(name="email.welcome")),
            ("retrying", Filters(status="retrying")),
        ):
            timed(f"list page 1: {label}", lambda f=filters: list_operations(f, limit=50))
            cursor = deep_cursor(filters)
            timed(
                f"list page 21: {label}",
                lambda f=filters, c=cursor: list_operations(f, cursor=c, limit=50),
            )
        top = group_failures(Filters(status="all")).issues[0].fingerprint
        timed(
            "list page 1: one fingerprint",
            lambda: list_operations(Filters(status="all", fingerprint=top), limit=50),
        )
        timed("search q=user4242@", lambda: list_operations(Filters(q="user4242@"), limit=50))
        timed("issues: unresolved", lambda: group_failures(Filters()))
        timed("issues: all", lambda: group_failures(Filters(status="all")))
        timed("issues: kind=webhook, 7d", lambda: group_failures(Filters(kind="webhook", range="7d")))
        timed("count matching (bulk preview): unresolved", lambda: count_matching(Filters()))
        timed("stat cards", dead_letter_stats)
        thresholds = app.config["HEALTH_THRESHOLDS"]
        db.session.execute(delete(OperationHourRollup))
        db.session.commit()
        for stage in ("live", "roll-ups"):
            if stage == "roll-ups":
                build_rollups()
            for window in ("1h", "24h", "7d"):
                timed(f"health cards {window} ({stage})", lambda w=window: health_page.health_metrics(w, thresholds))
                timed(f"breakdown {window} ({stage})", lambda w=window: health_page.breakdown(w))
                timed(f"trend {window} ({stage})", lambda w=window: health_page.trend(w))
        start = time.perf_counter()
        hourly.refresh(utcnow())
        print(f"{'one steady-state roll-up refresh (checks job)':<48} {(time.perf_counter() - start) * 1000:9.1f} ms")
        db.session.remove()


def build_rollups() -> None:
    """Build every hour roll-up as the checks job does (a day of missing hours per run)."""
    start, runs = time.perf_counter(), 0
    while hourly.stored_as_of(utcnow() - timedelta(days=7), utcnow()) is None and runs < 20:
        hourly.refresh(utcnow())
        runs += 1
    print(f"{'roll-ups built (' + str(runs) + ' checks-job runs)':<48} {(time.perf_counter() - start) * 1000:9.1f} ms")


def prepare(app, ops: int, url: str) -> None:
    """Migrate; fill unless the database already holds operations (a reused one); analyse."""
    with app.app_context():
        flask_migrate.upgrade()
        present = db.session.execute(select(func.count()).select_from(Operation)).scalar_one()
        db.session.remove()  # the fill writes through its own connection
        if present:
            print(f"reusing {present} operations on {db.engine.dialect.name}")
        else:
            start = time.perf_counter()
            fill(ops, url)
            print(f"filled {ops} operations in {time.perf_counter() - start:.0f} s on {db.engine.dialect.name}")
        for hook in PREPARE_HOOKS:
            start = time.perf_counter()
            hook()
            print(f"{hook.__doc__.splitlines()[0]} {time.perf_counter() - start:.1f} s")
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            # What autovacuum does after a bulk insert: without it the visibility map is empty
            # and every index-only scan (the dead-letter counts, the Issues grouping) reads the heap.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
        else:
            db.session.execute(text("ANALYZE"))
            db.session.commit()
        db.session.remove()


# What the periodic jobs would have done by the time an admin looks (roll-ups, say).
PREPARE_HOOKS: list = []


def main() -> None:
    """Fill (or reuse), analyse, time the queries, then the pages."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--reuse", metavar="URL", help="an existing bench database (a --keep run's URL)")
    parser.add_argument("--keep", action="store_true", help="keep the database and print its URL")
    parser.add_argument("--fill-only", action="store_true", help="fill and stop (with --keep)")
    parser.add_argument("--runs", type=int, default=20, help="requests per page for the p95")
    parser.add_argument(
        "--pages",
        metavar="TEXT",
        action="append",
        help="time only the pages whose label contains TEXT (repeatable); skips the query timings",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if args.reuse:
        url = args.reuse
    elif args.postgres:
        url = servers.create_postgres_database()
    else:
        url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    app = create_app(
        {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": url,
            "HUEY_URL": f"sqlite:///{tmp / 'huey.sqlite3'}",
        }
    )
    print(f"database: {url}   load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    try:
        prepare(app, args.ops, url)
        if not args.fill_only:
            if not args.pages:
                time_queries(app)
            else:  # the health pages read the roll-ups time_queries builds
                with app.app_context():
                    build_rollups()
                    db.session.remove()
            time_pages(app, args.runs, args.pages)
        print(f"load at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        if args.keep or args.reuse:
            print(f"kept: --reuse {url}")
        elif url.startswith("postgresql"):
            servers.drop_postgres_database(url)


if __name__ == "__main__":
    main()
