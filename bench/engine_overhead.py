"""How much does reliability cost per operation? Engine vs the bare minimum, same run.

Baseline: insert a row and mark it done with one UPDATE (what a fire-and-forget design
writes). Engine: create_operation + commit, then execute(): conditional claim, attempt row,
handler, conditional outcome. Both on the same database, in-process, no queue.

    .venv/bin/python bench/engine_overhead.py [--ops 500] [--postgres]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate
from sqlalchemy import text

from webapp import create_app
from webapp.extensions import db
from webapp.services.engine import operations, runner
from webapp.services.engine.registry import handler


@handler("bench.noop", kind="job")
def noop(ctx):
    """Do nothing: we measure the engine, not a handler."""


def baseline(count: int) -> float:
    """Insert-and-mark-done per item with plain SQL; returns seconds."""
    db.session.execute(text("CREATE TABLE IF NOT EXISTS bench_items (id INTEGER PRIMARY KEY, done INTEGER)"))
    db.session.commit()
    started = time.perf_counter()
    for number in range(count):
        db.session.execute(text("INSERT INTO bench_items (id, done) VALUES (:id, 0)"), {"id": number})
        db.session.commit()
        db.session.execute(text("UPDATE bench_items SET done = 1 WHERE id = :id"), {"id": number})
        db.session.commit()
    return time.perf_counter() - started


def with_engine(count: int) -> float:
    """Create, claim, run and record ``count`` operations; returns seconds."""
    started = time.perf_counter()
    for number in range(count):
        operation = operations.create_operation("bench.noop", {}, idempotency_key=f"bench-{number}")
        db.session.commit()
        result = runner.execute(operation.id)
        assert result.outcome == "succeeded", result
    return time.perf_counter() - started


def run(database_url: str, count: int) -> tuple[float, float]:
    """Both measurements on one fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "TESTING": True,
                "BACKSTOP_ENV": "test",
                "SQLALCHEMY_DATABASE_URI": database_url,
                "HUEY_URL": f"sqlite:///{tmp}/huey.db",
            }
        )
        with app.app_context():
            flask_migrate.upgrade()
            base = baseline(count)
            full = with_engine(count)
            db.session.remove()
            db.engine.dispose()
    return base, full


def main() -> None:
    """Print ops/s for both and the ratio, per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--postgres", action="store_true", help="also measure on 127.0.0.1:5432")
    args = parser.parse_args()
    backends = []
    with tempfile.TemporaryDirectory() as tmp:
        backends.append(("sqlite", f"sqlite:///{tmp}/bench.sqlite3"))
        if args.postgres:
            from tests.support.servers import create_postgres_database, drop_postgres_database

            backends.append(("postgresql", create_postgres_database()))
        print(f"{'backend':<12}{'baseline ops/s':>16}{'engine ops/s':>14}{'cost ratio':>12}")
        for name, url in backends:
            base, full = run(url, args.ops)
            print(f"{name:<12}{args.ops / base:>16.0f}{args.ops / full:>14.0f}{full / base:>11.1f}x")
            if name == "postgresql":
                drop_postgres_database(url)


if __name__ == "__main__":
    main()
