"""Worker drain rate: N no-op operations through one Backstop consumer vs bare Huey no-op tasks.

Both sides are filled first (consumer stopped), then one consumer with 4 threads and the same
flags is started and timed from the moment it logs that it started until the last item is
done: for Backstop, until every operation is ``succeeded`` in the database; for bare Huey, until
its queue is empty. Same queue backend for both: SqliteHuey files, or (``--redis``) Redis, with
Backstop's database on PostgreSQL.

Backstop's side: operations made with ``create_operation`` (rung into Huey after each batch's
commit) and run by ``huey_consumer tasks.worker.huey`` (``--flask-worker``: ``flask --app wsgi
worker``), which imports the no-op handler through ``BACKSTOP_HANDLER_MODULES=bench.noop_handlers``.
Bare side: ``huey_consumer bench.bare_huey.huey``, a task that returns at once. Durable floor:
``huey_consumer bench.floor_huey.huey``, bare Huey plus the claim and outcome transactions as raw
SQL on the bare driver (see that module), on operations of its own (``bench.floor``) in the same
database; the ratios Backstop/floor and floor/bare split the gap into Python and writes.

Afterwards every operation must have succeeded on its first attempt, with one attempt row, and
none may be left waiting or running (stranded); exits 1 otherwise.

    .venv/bin/python bench/worker_drain.py [--ops 2000] [--threads 4] [--redis]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

BATCH = 200


@dataclass(frozen=True)
class Drain:
    """One consumer's drain: wall seconds, and the CPU seconds its process used meanwhile."""

    seconds: float
    cpu_seconds: float


def drain(process: common.Process, done, timeout: float = 600) -> Drain:
    """Seconds (and the consumer's CPU seconds) from its start-up line until ``done()`` is true."""
    common.wait_for(lambda: common.started_offset(process) or _exited(process), interval=0.005, message="start")
    started, cpu = time.perf_counter(), process.cpu_seconds()
    common.wait_for(lambda: done() or _exited(process), timeout=timeout, interval=0.02, message="the drain")
    return Drain(time.perf_counter() - started, process.cpu_seconds() - cpu)


def _exited(process: common.Process) -> bool:
    if not process.alive():
        raise RuntimeError(f"consumer exited:\n{process.output()[-3000:]}")
    return False


def bare_huey(backend: common.Backend, count: int, threads: int) -> Drain:
    """Enqueue ``count`` bare no-op tasks, then time one consumer draining them."""
    os.environ.update(HUEY_URL=backend.huey_url, HUEY_NAME=backend.huey_name)
    module = importlib.import_module("bench.bare_huey")
    module = importlib.reload(module)  # a new backend per run: rebuild the queue from the environment
    for number in range(count):
        module.bare_noop(number)
    assert module.huey.pending_count() == count, module.huey.pending_count()
    process = common.huey_consumer("bench.bare_huey.huey", backend.env(), backend.tmp / "bare.log", threads)
    try:
        return drain(process, lambda: module.huey.pending_count() == 0)
    finally:
        process.stop()


FLOOR_INSERT = (
    "INSERT INTO operations (kind, name, payload, idempotency_key, state, attempts, max_attempts,"
    " next_attempt_at, enqueued_at, created_at, updated_at) VALUES ('job', 'bench.floor', '{}', :key, 'pending',"
    " 0, 4, :now, :now, :now, :now)"
)


def floor(backend: common.Backend, count: int, threads: int) -> Drain:
    """Insert ``count`` operations and ring the floor's queue for each, then time its consumer."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    engine = common.sql_engine(backend)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(text(FLOOR_INSERT), [{"key": f"floor-{n}", "now": now} for n in range(count)])
        ids = connection.execute(text("SELECT id FROM operations WHERE name = 'bench.floor' ORDER BY id")).scalars()
        ids = list(ids)
    os.environ.update(HUEY_URL=backend.huey_url, HUEY_NAME=backend.huey_name, DATABASE_URL=backend.database_url)
    module = importlib.reload(importlib.import_module("bench.floor_huey"))
    for operation_id in ids:
        module.floor_run(operation_id)
    engine.dispose()
    process = common.huey_consumer("bench.floor_huey.huey", backend.env(), backend.tmp / "floor.log", threads)
    return drain_until_succeeded(backend, process, "bench.floor", count)


def drain_until_succeeded(backend: common.Backend, process: common.Process, name: str, count: int) -> Drain:
    """Seconds until ``count`` operations named ``name`` have succeeded; stops the consumer."""
    engine = common.sql_engine(backend)
    succeeded = "SELECT count(*) FROM operations WHERE name = :name AND state = 'succeeded'"
    try:
        return drain(process, lambda: common.scalar(engine, succeeded, name=name) == count)
    finally:
        process.stop()
        engine.dispose()


def fill_operations(backend: common.Backend, count: int) -> None:
    """Create ``count`` no-op operations with ``create_operation``, committed (and rung) in batches."""
    import bench.noop_handlers
    from webapp.extensions import db
    from webapp.services.engine import operations

    app = common.make_app(backend)
    with app.app_context():
        for start in range(0, count, BATCH):
            for number in range(start, min(count, start + BATCH)):
                operations.create_operation(bench.noop_handlers.NOOP, {}, idempotency_key=f"drain-{number}")
            db.session.commit()
        db.session.remove()
        db.engine.dispose()


def backstop(backend: common.Backend, count: int, threads: int, flask_worker: bool) -> Drain:
    """Fill ``count`` operations, then time one consumer running them all."""
    fill_operations(backend, count)
    env = backend.env(BACKSTOP_HANDLER_MODULES="bench.noop_handlers", WORKER_THREADS=threads)
    log = backend.tmp / "backstop.log"
    if flask_worker:
        process = common.flask_worker(env, log, threads, scheduler=False)
    else:
        process = common.huey_consumer("tasks.worker.huey", env, log, threads)
    return drain_until_succeeded(backend, process, "bench.noop", count)


def ledger(backend: common.Backend, count: int, name: str = "bench.noop") -> list[str]:
    """Problems: ``name``'s operations not succeeded (stranded or failed), retried, or with extra attempts."""
    engine = common.sql_engine(backend)
    ours = "SELECT id FROM operations WHERE name = :name"
    by_state = "SELECT state, count(*) FROM operations WHERE name = :name GROUP BY state"
    states = dict(common.rows(engine, by_state, name=name))
    of_ours = f"SELECT count(*) FROM operation_attempts WHERE operation_id IN ({ours})"
    attempts = common.scalar(engine, of_ours, name=name)
    retried = common.scalar(engine, "SELECT count(*) FROM operations WHERE name = :name AND attempts <> 1", name=name)
    engine.dispose()
    print(f"  ledger of {name}: states {states}, {attempts} attempt rows, {retried} operations with attempts != 1")
    problems = []
    if states.get("succeeded", 0) != count or sum(states.values()) != count:
        problems.append(f"expected {count} succeeded operations, found {states}")
    if attempts != count or retried:
        problems.append(f"{attempts} attempts for {count} operations ({retried} not on the first attempt)")
    return problems


def main() -> None:
    """Measure bare Huey and Backstop on each backend; print ops/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--redis", action="store_true", help="also PostgreSQL + Redis")
    parser.add_argument("--only-redis", action="store_true", help="PostgreSQL + Redis only")
    parser.add_argument("--flask-worker", action="store_true", help="run Backstop as `flask --app wsgi worker`")
    args = parser.parse_args()
    names = ["sqlite"] * (not args.only_redis) + ["postgres"] * (args.redis or args.only_redis)
    common.require_servers("postgres" in names)
    problems = []
    results = []
    for name in names:
        with common.backend(name, "drain") as backend:
            bare = bare_huey(backend, args.ops, args.threads)
            least = floor(backend, args.ops, args.threads)
            full = backstop(backend, args.ops, args.threads, args.flask_worker)
            problems += [f"{name}: {problem}" for problem in ledger(backend, args.ops)]
            problems += [f"{name} floor: {problem}" for problem in ledger(backend, args.ops, "bench.floor")]
        queue = "SqliteHuey" if name == "sqlite" else "Redis (+ PostgreSQL)"
        results.append((queue, bare, least, full))
    print(f"\n{args.ops} no-op items, one consumer, {args.threads} threads")
    header = f"{'queue':<22}{'bare Huey /s':>14}{'floor /s':>10}{'Backstop /s':>13}"
    print(header + f"{'floor/bare':>12}{'Backstop/bare':>15}{'Backstop/floor':>16}")
    for queue, bare, least, full in results:
        bare_rate, floor_rate, rate = (args.ops / side.seconds for side in (bare, least, full))
        print(
            f"{queue:<22}{bare_rate:>14.0f}{floor_rate:>10.0f}{rate:>13.0f}"
            f"{floor_rate / bare_rate:>12.2f}{rate / bare_rate:>15.2f}{rate / floor_rate:>16.2f}"
        )
    # The consumer's own CPU per item: steadier than the rates on a shared machine, and the part
    # that its single interpreter lock caps.
    print(f"\n{'consumer CPU ms/item':<22}{'bare Huey':>14}{'floor':>10}{'Backstop':>13}")
    for queue, bare, least, full in results:
        per_item = [side.cpu_seconds * 1000 / args.ops for side in (bare, least, full)]
        print(f"{queue:<22}{per_item[0]:>14.3f}{per_item[1]:>10.3f}{per_item[2]:>13.3f}")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("\nledger ok: every operation succeeded on its first attempt, none stranded")


if __name__ == "__main__":
    main()
