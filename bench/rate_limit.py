"""What does the email rate limiter cost per send, at 10/min and at 1,000,000/min? Same run.

Each send reserves the recipient's scope and the global scope (``ratelimit.reserve``, as delivery
does), on a clock injected to advance one 10/min interval (6 s) per send, so every send is
allowed at both limits. Baseline: one bare ``UPDATE`` of one row and a ``COMMIT`` per send (the
least any limiter shared through the database can write). Also: the cost of a send that is
deferred (the scope is full). SQL statements are counted with a ``before_cursor_execute`` hook.

    .venv/bin/python bench/rate_limit.py [--sends 2000] [--postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate
from sqlalchemy import event, text

from webapp import create_app
from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.services.email import ratelimit

START = datetime(2030, 1, 1)
STEP = timedelta(seconds=6)  # one interval at 10/min: every send is allowed at both limits
ROUNDS = 5
clock = [START]  # the injected clock, one step per allowed send, never going back (scopes are shared)


class Statements:
    """Counts the statements sent to the database while enabled."""

    def __init__(self):
        self.count = 0
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args) -> None:
        self.count += 1


def timed(statements: Statements, sends: int, send) -> tuple[float, float]:
    """(ms per send, statements per send) over ``sends`` calls of ``send(n)``."""
    before = statements.count
    started = time.perf_counter()
    for number in range(sends):
        send(number)
    elapsed = time.perf_counter() - started
    return elapsed * 1000 / sends, (statements.count - before) / sends


def bare_update(number: int) -> None:
    """The floor: one UPDATE of one row, committed."""
    db.session.execute(text("UPDATE bench_counter SET n = n + 1 WHERE id = 1"))
    db.session.commit()


def allowed_send(limit: int):
    """A send to one recipient at ``limit``/min that the limiter lets through."""

    def send(number: int) -> None:
        clock[0] += STEP
        ratelimit.reserve(f"r{limit}@example.com", now=clock[0], per_recipient=limit, global_limit=limit)

    return send


def deferred_send(number: int) -> None:
    """A send at 10/min to a recipient whose minute is full: deferred."""
    try:
        ratelimit.reserve("full@example.com", now=START, per_recipient=10, global_limit=0)
    except Deferral:
        return
    raise AssertionError("expected a deferral")


def run(database_url: str, sends: int) -> list[tuple[str, float, float]]:
    """Every measurement on one fresh database: (label, ms per send, statements per send)."""
    rows = []
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
            db.session.execute(text("CREATE TABLE bench_counter (id INTEGER PRIMARY KEY, n INTEGER)"))
            db.session.execute(text("INSERT INTO bench_counter (id, n) VALUES (1, 0)"))
            db.session.commit()
            statements = Statements()
            allowed_send(10)(-1)  # create the scopes' rows: measure the steady state
            allowed_send(1_000_000)(-1)
            for _ in range(10):
                deferred_send_fill()
            measures = [
                ("bare UPDATE + COMMIT (floor)", bare_update),
                ("allowed send, 10/min", allowed_send(10)),
                ("allowed send, 1,000,000/min", allowed_send(1_000_000)),
                ("deferred send, 10/min (full)", deferred_send),
            ]
            # Interleaved rounds, median per measure: a busy machine slows them all alike.
            samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in measures}
            for _ in range(ROUNDS):
                for label, send in measures:
                    samples[label].append(timed(statements, sends // ROUNDS, send))
            for label, _ in measures:
                ms = statistics.median(sample[0] for sample in samples[label])
                rows.append((label, ms, samples[label][-1][1]))
            db.session.remove()
            db.engine.dispose()
    return rows


def deferred_send_fill() -> None:
    """Take one of the full scope's ten sends."""
    ratelimit.reserve("full@example.com", now=START, per_recipient=10, global_limit=0)


def main() -> None:
    """Print per-send cost and its ratio to the floor, per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true", help="also measure on 127.0.0.1:5432")
    args = parser.parse_args()
    backends = []
    with tempfile.TemporaryDirectory() as tmp:
        backends.append(("sqlite", f"sqlite:///{tmp}/bench.sqlite3"))
        if args.postgres:
            from tests.support.servers import create_postgres_database, drop_postgres_database

            backends.append(("postgresql", create_postgres_database()))
        print(f"{'backend':<12}{'measure':<32}{'ms/send':>9}{'SQL/send':>10}{'x floor':>9}")
        for name, url in backends:
            rows = run(url, args.sends)
            floor = rows[0][1]
            for label, ms, count in rows:
                print(f"{name:<12}{label:<32}{ms:>9.3f}{count:>10.1f}{ms / floor:>8.1f}x")
            if name == "postgresql":
                drop_postgres_database(url)


if __name__ == "__main__":
    main()
