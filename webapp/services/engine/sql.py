"""Statements the hot paths reuse: a portable ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and
PostgreSQL both have it), inserts compiled once per dialect and sent as the driver's SQL, and
the autocommit connection single-statement transactions run on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Dialect

from webapp.extensions import db


@lru_cache(maxsize=32)
def insert_ignoring_conflicts(table: Table, dialect: str, returning: tuple = ()):
    """The statement for ``table`` on ``dialect`` ("postgresql" or "sqlite"), optionally with RETURNING.

    Cached, so a hot path reuses one statement object (and SQLAlchemy its compiled form).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).on_conflict_do_nothing()
    return statement.returning(*returning) if returning else statement


@dataclass(frozen=True)
class PreparedInsert:
    """An INSERT of a fixed set of columns, compiled once for one dialect.

    :meth:`parameters` converts the values as SQLAlchemy's own execution would (JSON documents
    serialised, datetimes in SQLite's text format) and can run before the transaction begins;
    :meth:`execute` then sends the compiled SQL through the connection as it is, with
    SQLAlchemy's error wrapping and events but without building the statement again.
    """

    sql: str
    names: tuple[str, ...]
    processors: tuple
    positional: bool

    def parameters(self, values: dict) -> tuple | dict:
        """``values`` (one per column of the insert) in the driver's form."""
        converted = [
            value if process is None else process(value)
            for process, value in zip(self.processors, [values[name] for name in self.names], strict=True)
        ]
        return tuple(converted) if self.positional else dict(zip(self.names, converted, strict=True))

    def execute(self, connection: Connection, parameters: tuple | dict) -> CursorResult:
        """Run the insert with parameters from :meth:`parameters` (in the connection's transaction)."""
        return connection.exec_driver_sql(self.sql, parameters)


@lru_cache(maxsize=64)
def prepared_insert(
    table: Table, dialect: Dialect, columns: tuple[str, ...], returning: tuple = (), ignore_conflicts: bool = False
) -> PreparedInsert:
    """The insert of ``columns`` into ``table`` for ``dialect``, compiled once (cached per dialect object).

    Every column the insert writes must be in ``columns``: one whose Python-side default
    SQLAlchemy would have filled in is refused here, at the first call, rather than left NULL.
    """
    if ignore_conflicts:
        statement = insert_ignoring_conflicts(table, dialect.name, returning)
    else:
        statement = table.insert().returning(*returning) if returning else table.insert()
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    if set(names) != set(columns):
        raise ValueError(f"an insert into {table.name} of {columns} also writes {sorted(set(names) - set(columns))}")
    processors = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    return PreparedInsert(compiled.string, names, processors, compiled.positional)


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A pooled connection on which every statement is its own transaction: on PostgreSQL one
    round trip per statement, with no BEGIN or COMMIT of its own (the pool restores the mode)."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        yield connection
