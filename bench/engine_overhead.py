"""How much does reliability cost per operation? Engine vs the bare minimum, same run, in process.

Baseline: insert a row and mark it done with one UPDATE, two commits (what a fire-and-forget
design writes). Engine: ``create_operation`` + commit, then ``runner.execute()``: conditional
claim, attempt row, the no-op handler, conditional outcome. Both on the same database, in one
process, no queue. Prints milliseconds per operation (timed without a profiler, after a warm-up)
and Python function calls per operation (counted with ``sys.setprofile`` over a separate, shorter
run: Python-level calls, and calls into C functions).

    .venv/bin/python bench/engine_overhead.py [--ops 500] [--count-ops 100] [--postgres] [--top 0]

``--top N`` also prints the N functions with the most cumulative time (cProfile) for the engine.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench import common
from bench.noop_handlers import NOOP
from webapp.extensions import db
from webapp.services.engine import operations, runner

_numbers = itertools.count()


def baseline_once() -> None:
    """Insert-and-mark-done of one item with plain SQL, two commits."""
    number = next(_numbers)
    db.session.execute(text("INSERT INTO bench_items (id, done) VALUES (:id, 0)"), {"id": number})
    db.session.commit()
    db.session.execute(text("UPDATE bench_items SET done = 1 WHERE id = :id"), {"id": number})
    db.session.commit()


def engine_once() -> None:
    """Create, claim, run and record one no-op operation."""
    operation = operations.create_operation(NOOP, {}, idempotency_key=f"bench-{next(_numbers)}")
    db.session.commit()
    result = runner.execute(operation.id)
    assert result.outcome == "succeeded", result


def seconds_for(step, count: int) -> float:
    """Wall time of ``count`` steps."""
    started = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - started


def calls_for(step, count: int) -> tuple[int, int]:
    """(Python calls, C calls) made by ``count`` steps, counted with ``sys.setprofile``."""
    counts = {"call": 0, "c_call": 0}

    def count_call(frame, event, arg):
        if event in counts:
            counts[event] += 1

    sys.setprofile(count_call)
    try:
        for _ in range(count):
            step()
    finally:
        sys.setprofile(None)
    return counts["call"], counts["c_call"]


def top_functions(step, count: int, top: int) -> None:
    """Print the ``top`` functions by cumulative time over ``count`` steps."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(count):
        step()
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(top)


def measure(backend: common.Backend, args: argparse.Namespace) -> dict:
    """Both sides on one fresh database: ms/op and calls/op."""
    app = common.make_app(backend)
    common.log_to_file(backend.tmp / "app.log")
    results = {}
    with app.app_context():
        db.session.execute(text("CREATE TABLE bench_items (id INTEGER PRIMARY KEY, done INTEGER)"))
        db.session.commit()
        for label, step in (("baseline", baseline_once), ("engine", engine_once)):
            seconds_for(step, args.warmup)
            elapsed = seconds_for(step, args.ops)
            python_calls, c_calls = calls_for(step, args.count_ops)
            results[label] = (elapsed * 1000 / args.ops, python_calls / args.count_ops, c_calls / args.count_ops)
        if args.top:
            top_functions(engine_once, args.count_ops, args.top)
        db.session.remove()
        db.engine.dispose()
    return results


def main() -> None:
    """Print ms/op, calls/op and the ratios per backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500, help="timed operations per side")
    parser.add_argument("--count-ops", type=int, default=100, help="operations per side for counting calls")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--top", type=int, default=0, help="print the engine's top N functions (cProfile)")
    parser.add_argument("--postgres", action="store_true", help="also measure on 127.0.0.1:5432")
    parser.add_argument("--only-postgres", action="store_true")
    args = parser.parse_args()
    names = ["sqlite"] * (not args.only_postgres) + ["postgres"] * (args.postgres or args.only_postgres)
    common.require_servers("postgres" in names)
    table = []
    for name in names:
        with common.backend(name, "engine") as backend:
            table.append((name, measure(backend, args)))
    print(f"\n{args.ops} operations timed, {args.count_ops} counted, per side, in process, no queue")
    print(
        f"{'backend':<11}{'baseline ms/op':>15}{'engine ms/op':>13}{'ratio':>7}"
        f"{'baseline calls/op':>19}{'engine calls/op':>17}{'engine C calls/op':>19}"
    )
    for name, results in table:
        base_ms, base_py, base_c = results["baseline"]
        ms, python_calls, c_calls = results["engine"]
        print(
            f"{name:<11}{base_ms:>15.2f}{ms:>13.2f}{ms / base_ms:>6.1f}x"
            f"{base_py:>19.0f}{python_calls:>17.0f}{c_calls:>19.0f}"
        )


if __name__ == "__main__":
    main()
