"""Statements the hot paths reuse: a portable ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and
PostgreSQL both have it), statements compiled once per dialect and sent as the driver's SQL, and
single statements run as their own transaction straight on the driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

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
class PreparedStatement:
    """A statement compiled once for one dialect.

    :meth:`parameters` converts the values as SQLAlchemy's own execution would (JSON documents
    serialised, datetimes in SQLite's text format) and can run before the transaction begins;
    :meth:`execute` then sends the compiled SQL through the connection as it is, with
    SQLAlchemy's error wrapping and events but without building the statement again, and
    :func:`run_alone` sends it straight to the driver as its own transaction.
    """

    sql: str
    names: tuple[str, ...]
    processors: tuple
    positional: bool
    constants: dict = field(default_factory=dict)  # parameters whose value the statement carries
    columns: tuple[str, ...] = ()  # what a RETURNING or SELECT gives back, in order
    result_processors: tuple = ()

    def parameters(self, values: dict) -> tuple | dict:
        """``values`` (one per parameter of the statement, constants aside) in the driver's form."""
        if self.constants:
            values = self.constants | values
        converted = [
            value if process is None else process(value)
            for process, value in zip(self.processors, [values[name] for name in self.names], strict=True)
        ]
        return tuple(converted) if self.positional else dict(zip(self.names, converted, strict=True))

    def execute(self, connection: Connection, parameters: tuple | dict) -> CursorResult:
        """Run the statement with parameters from :meth:`parameters` (in the connection's transaction)."""
        return connection.exec_driver_sql(self.sql, parameters)

    def row(self, values: tuple) -> dict:
        """A row the driver returned, as SQLAlchemy would give it: by column name, results converted."""
        return {
            name: value if process is None else process(value)
            for name, process, value in zip(self.columns, self.result_processors, values, strict=True)
        }


@lru_cache(maxsize=64)
def prepare(statement: ClauseElement, dialect: Dialect) -> PreparedStatement:
    """``statement`` compiled once for ``dialect`` (cached per statement object and dialect object)."""
    return _prepared(statement.compile(dialect=dialect), statement, dialect)


@lru_cache(maxsize=64)
def prepared_insert(
    table: Table, dialect: Dialect, columns: tuple[str, ...], returning: tuple = (), ignore_conflicts: bool = False
) -> PreparedStatement:
    """The insert of ``columns`` into ``table`` for ``dialect``, compiled once (cached per dialect object).

    Every column the insert writes must be in ``columns``: one whose Python-side default
    SQLAlchemy would have filled in is refused here, at the first call, rather than left NULL.
    """
    if ignore_conflicts:
        statement = insert_ignoring_conflicts(table, dialect.name, returning)
    else:
        statement = table.insert().returning(*returning) if returning else table.insert()
    prepared = _prepared(statement.compile(dialect=dialect, column_keys=list(columns)), statement, dialect)
    if set(prepared.names) != set(columns):
        raise ValueError(
            f"an insert into {table.name} of {columns} also writes {sorted(set(prepared.names) - set(columns))}"
        )
    return prepared


def _prepared(compiled, statement: ClauseElement, dialect: Dialect) -> PreparedStatement:
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the name the SQL uses
    names = tuple(compiled.positiontup) if compiled.positional else tuple(binds)
    processors = tuple(binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    # Literals in the statement (``literal("running")``) are parameters whose value it carries.
    constants = {name: bind.value for name, bind in binds.items() if not bind.required and bind.callable is None}
    returned = getattr(statement, "exported_columns", None)
    returned = tuple(returned.items()) if returned is not None else ()
    return PreparedStatement(
        compiled.string,
        names,
        processors,
        compiled.positional,
        constants,
        tuple(name for name, _ in returned),
        tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for _, column in returned),
    )


def run_alone(prepared: PreparedStatement, values: dict) -> dict | None:
    """Run ``prepared`` as its own transaction (autocommit) straight on the driver; its first row.

    One round trip and none of SQLAlchemy's execution layer (about 0.15 ms a statement on the
    hot paths it serves): a pooled connection is put in autocommit for the one statement and
    restored. Errors are raised as SQLAlchemy raises them (``IntegrityError``,
    ``OperationalError`` ...), without the parameters (they carry customers' data); a
    connection the error shows to be dead is discarded, not pooled. PostgreSQL only: on SQLite
    it would write without taking the writer's turn (``webapp/database.py``).
    """
    engine = db.engine
    dialect = engine.dialect
    if dialect.name != "postgresql":
        raise ValueError(f"run_alone is for PostgreSQL; {dialect.name} writers take turns in a transaction")
    parameters = prepared.parameters(values)
    try:
        connection = engine.raw_connection()
    except dialect.loaded_dbapi.Error as error:  # the server refused or could not be reached
        raise _as_sqlalchemy_error(error, prepared.sql, dialect, invalidated=False) from error
    cursor = None
    try:
        # The driver's own switch (psycopg's, as psycopg2's): the isolation level SQLAlchemy set
        # stays as it was, so only this flag needs putting back (half the work of the dialect's).
        connection.dbapi_connection.autocommit = True
        cursor = connection.cursor()
        cursor.execute(prepared.sql, parameters)
        found = cursor.fetchone() if prepared.columns else None
    except dialect.loaded_dbapi.Error as error:
        dead = dialect.is_disconnect(error, connection.dbapi_connection, cursor)
        if dead:
            connection.invalidate(error)
        raise _as_sqlalchemy_error(error, prepared.sql, dialect, invalidated=dead) from error
    finally:
        if cursor is not None:
            cursor.close()
        _give_back(connection, dialect)
    return None if found is None else prepared.row(found)


def _as_sqlalchemy_error(error: Exception, sql: str, dialect: Dialect, *, invalidated: bool) -> DBAPIError:
    """The driver's ``error`` as SQLAlchemy would raise it, without the statement's parameters."""
    return DBAPIError.instance(
        sql,
        None,  # no parameters: they carry customers' data
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=invalidated,
        dialect=dialect,
    )


def _give_back(connection, dialect: Dialect) -> None:
    """Restore the connection's transaction mode and return it to the pool (discarded if it cannot be)."""
    if connection.dbapi_connection is not None:  # None once invalidated
        try:
            connection.dbapi_connection.autocommit = False
        except dialect.loaded_dbapi.Error as error:
            connection.invalidate(error)
    connection.close()
