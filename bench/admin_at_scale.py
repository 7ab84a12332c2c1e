"""The admin console's queries against a million operations (SQLite or PostgreSQL).

Fills a fresh database with ``--ops`` operations over 30 days (3 % dead-lettered, a quarter
of those resolved, 40 error fingerprints, four kinds, a dozen names), runs ANALYZE, then
times each query the console runs: list pages (first and deep, by filter), the Issues
grouping, the stat cards, the health cards, the per-name breakdown and a text search.

    .venv/bin/python bench/admin_at_scale.py [--ops 1000000] [--postgres]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate
from sqlalchemy import insert, text

from webapp import create_app
from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.failures import dead_letter_stats, list_operations
from webapp.services.console.filters import Filters
from webapp.services.console.issues import group_failures
from webapp.services.monitoring import health_page

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


def fill(count: int, seed: int = 7) -> None:
    """Insert ``count`` operations in batches."""
    rng = random.Random(seed)
    now = utcnow()
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    batch = []
    for n in range(count):
        kind = rng.choices(kinds, weights)[0]
        created = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        row = dict(
            kind=kind,
            name=rng.choice(NAMES[kind]),
            payload={"to": f"user{n}@example.com"},
            idempotency_key=f"bench-{n}",
            subject=f"purchase:{n}",
            attempts=1,
            max_attempts=4,
            next_attempt_at=created,
            created_at=created,
            updated_at=created,
        )
        roll = rng.random()
        if roll < 0.03:
            error_class, template = rng.choice(ERRORS)
            message = template.format(n=rng.randint(1, 99999))
            row.update(
                state="dead",
                attempts=4,
                dead_at=created + timedelta(minutes=5),
                error_class=error_class,
                error_message=message,
                error_fingerprint=fingerprint_of(error_class, message),
            )
            if rng.random() < 0.25:
                row.update(resolved_at=created + timedelta(hours=2), resolved_by="ops@example.com")
        elif roll < 0.032:
            row.update(state="retrying", attempts=2, next_attempt_at=now + timedelta(seconds=rng.uniform(-60, 600)))
        else:
            row.update(state="succeeded", succeeded_at=created + timedelta(seconds=2), attempts=1 if roll < 0.95 else 2)
        batch.append(row)
        if len(batch) == 10_000:
            db.session.execute(insert(Operation), batch)
            db.session.commit()
            batch = []
    if batch:
        db.session.execute(insert(Operation), batch)
        db.session.commit()


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


def main() -> None:
    """Fill, analyse, time."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.support import servers

        url = servers.create_postgres_database()
    app = create_app(
        {
            "TESTING": True,
            "BACKSTOP_ENV": "test",
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": url,
            "HUEY_URL": f"sqlite:///{tmp / 'huey.sqlite3'}",
        }
    )
    try:
        with app.app_context():
            flask_migrate.upgrade()
            start = time.perf_counter()
            fill(args.ops)
            print(f"filled {args.ops} operations in {time.perf_counter() - start:.0f} s on {db.engine.dialect.name}")
            db.session.execute(text("ANALYZE"))
            db.session.commit()
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
            timed("count matching (bulk preview): unresolved", lambda: filters.count_matching(Filters()))
            timed("stat cards", dead_letter_stats)
            thresholds = app.config["HEALTH_THRESHOLDS"]
            for window in ("1h", "24h", "7d"):
                timed(f"health cards {window}", lambda w=window: health_page.health_metrics(w, thresholds))
                timed(f"breakdown {window}", lambda w=window: health_page.breakdown(w))
            db.session.remove()
            db.engine.dispose()
    finally:
        if args.postgres:
            servers.drop_postgres_database(url)


if __name__ == "__main__":
    main()
