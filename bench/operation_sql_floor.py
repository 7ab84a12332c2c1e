"""What an operation's life costs in SQLite itself, without Python: the floor under the engine.

The engine's three short transactions (insert the operation; claim it; record its outcome),
written as the raw SQL it sends, through the bare ``sqlite3`` driver, on the migrated schema
(with every index the console needs), and the same three transactions on a table with no
secondary index, in the same run. The difference is what the schema's indexes cost per
operation; the engine cannot go below the first figure.

    .venv/bin/python bench/operation_sql_floor.py [--ops 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

INSERT = (
    "INSERT INTO {table} (kind, name, payload, idempotency_key, subject, state, attempts, max_attempts,"
    " next_attempt_at, enqueued_at, created_at, updated_at) VALUES ('job', 'bench.noop', '{{}}', ?, NULL,"
    " 'pending', 0, 3, '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
)
CLAIM = (
    "UPDATE {table} SET state = 'running', attempts = attempts + 1, lease_expires_at = '2026-01-01 00:05:00',"
    " last_attempt_at = '2026-01-01 00:00:01', updated_at = '2026-01-01 00:00:01' WHERE id = ?"
)
FINISH = (
    "UPDATE {table} SET state = 'succeeded', succeeded_at = '2026-01-01 00:00:02', lease_expires_at = NULL,"
    " updated_at = '2026-01-01 00:00:02' WHERE id = ? AND state = 'running'"
)


def life(connection: sqlite3.Connection, table: str, key: str) -> None:
    """One operation's three transactions, as the engine writes them (attempt rows left out)."""
    connection.execute("BEGIN IMMEDIATE")
    operation_id = connection.execute(INSERT.format(table=table), (key,)).lastrowid
    connection.execute("COMMIT")
    for statement in (CLAIM, FINISH):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(statement.format(table=table), (operation_id,))
        connection.execute("COMMIT")


def per_operation_ms(connection: sqlite3.Connection, table: str, count: int, tag: str) -> float:
    """Milliseconds per operation life over ``count`` operations."""
    started = time.perf_counter()
    for number in range(count):
        life(connection, table, f"{tag}-{number}")
    return (time.perf_counter() - started) / count * 1000


def main() -> None:
    """Print ms per operation on the real schema and on an index-free copy of the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    with common.backend("sqlite", "sqlfloor") as backend:
        common.migrate(backend)
        connection = sqlite3.connect(backend.tmp / "backstop.sqlite3", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        indexes = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'operations'"
        ).fetchone()[0]
        connection.execute("CREATE TABLE bare_operations AS SELECT * FROM operations WHERE 0")
        rounds = {"operations": [], "bare_operations": []}
        for round_number in range(3):  # interleaved, so load changes hit both alike
            for table in rounds:
                rounds[table].append(per_operation_ms(connection, table, args.ops, f"r{round_number}"))
        schema, bare = min(rounds["operations"]), min(rounds["bare_operations"])
    print(f"{args.ops} operations x 3 rounds (best), bare sqlite3 driver, WAL, synchronous=NORMAL")
    print(f"  operations table ({indexes} indexes)   {schema:.3f} ms per operation (insert, claim, outcome)")
    print(f"  same table, no secondary index    {bare:.3f} ms per operation")
    print(f"  the schema's indexes cost {schema - bare:.3f} ms per operation ({schema / bare:.1f}x)")


if __name__ == "__main__":
    main()
