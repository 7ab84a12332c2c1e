"""Statements the hot paths reuse: a portable ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and
PostgreSQL both have it), statements compiled once per dialect and sent as the driver's SQL, and
single statements run as their own transaction straight on the driver."""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement

from webapp.database import PING_AFTER_IDLE_SECONDS, ping
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


class AutocommitConnections:
    """PostgreSQL connections kept in autocommit for :func:`run_alone`, beside the engine's pool.

    Taking one is a pop from a list: no pool checkout or checkin, no switch of the connection's
    mode and back, no reset on return (together about a tenth of a no-op operation's CPU). They
    are made by a copy of the engine's pool (``Pool.recreate``: the same creator, settings and
    connect events), at most :attr:`keep` wait idle, and one idle for longer than
    :data:`~webapp.database.PING_AFTER_IDLE_SECONDS` is pinged before it is used, as the engine's
    own are. Disposing of the engine closes them; a forked child starts without any.
    """

    def __init__(self, engine: Engine):
        self.pool = engine.pool.recreate()
        self.keep = max(1, engine.pool.size())
        self.idle: list[tuple[PoolProxiedConnection, float]] = []  # (connection, idle since), newest last
        self.lock = threading.Lock()
        self.closed = False

    def take(self) -> PoolProxiedConnection:
        """An idle connection (pinged first if it sat idle long), else a new one."""
        with self.lock:
            found = self.idle.pop() if self.idle else None
        connection = None
        if found is not None:
            connection, since = found
            if time.monotonic() - since >= PING_AFTER_IDLE_SECONDS and ping(connection.dbapi_connection) is not None:
                # A dead idle connection means its siblings likely died too (a restart).
                self.discard(connection, None)
                self.discard_idle()
                connection = None
        if connection is None:
            connection = self.pool.connect()
            try:
                connection.dbapi_connection.autocommit = True
            except BaseException as error:
                self.discard(connection, error)
                raise
        return connection

    def give_back(self, connection: PoolProxiedConnection) -> None:
        """Keep ``connection`` for the next statement, or close it if enough are idle."""
        with self.lock:
            if not self.closed and len(self.idle) < self.keep:
                self.idle.append((connection, time.monotonic()))
                return
        # Closed for good, not returned to the copy of the pool: it would keep as many again idle.
        connection.invalidate()

    def discard(self, connection: PoolProxiedConnection, error: BaseException | None) -> None:
        """Close ``connection`` for good (the statement found it dead, or it is in an unknown state)."""
        connection.invalidate(error)

    def discard_idle(self) -> None:
        """Close every idle connection."""
        with self.lock:
            idle, self.idle = self.idle, []
        for connection, _ in idle:
            connection.invalidate()

    def close(self) -> None:
        """Close the idle connections and those given back from now on (the engine was disposed of)."""
        self.closed = True
        self.discard_idle()
        self.pool.dispose()


_autocommit: weakref.WeakKeyDictionary[Engine, AutocommitConnections] = weakref.WeakKeyDictionary()
_autocommit_lock = threading.Lock()
_inherited: list[AutocommitConnections] = []  # a parent process's, kept so their sockets stay open


def autocommit_connections(engine: Engine) -> AutocommitConnections:
    """``engine``'s :class:`AutocommitConnections` (made on first use, closed when it is disposed of)."""
    found = _autocommit.get(engine)
    if found is not None:
        return found
    with _autocommit_lock:
        found = _autocommit.get(engine)
        if found is None:
            found = _autocommit[engine] = AutocommitConnections(engine)
            event.listen(engine, "engine_disposed", _on_dispose)
    return found


def _on_dispose(engine: Engine) -> None:
    with _autocommit_lock:
        found = _autocommit.pop(engine, None)
    if found is not None:
        found.close()


def _forget_after_fork() -> None:
    """In a forked child: start over without the parent's connections, but never close them
    (closing would end the parent's sessions, whose sockets the child shares)."""
    _inherited.extend(_autocommit.values())
    _autocommit.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def run_alone(prepared: PreparedStatement, values: dict) -> dict | None:
    """Run ``prepared`` as its own transaction (autocommit) straight on the driver; its first row.

    One round trip and none of SQLAlchemy's execution layer, on one of the engine's
    :class:`AutocommitConnections`. Errors are raised as SQLAlchemy raises them
    (``IntegrityError``, ``OperationalError`` ...), without the parameters (they carry customers'
    data); a connection the error shows to be dead, or left in an unknown state, is discarded.
    PostgreSQL only: on SQLite it would write without taking the writer's turn
    (``webapp/database.py``).
    """
    engine = db.engine
    dialect = engine.dialect
    if dialect.name != "postgresql":
        raise ValueError(f"run_alone is for PostgreSQL; {dialect.name} writers take turns in a transaction")
    parameters = prepared.parameters(values)
    connections = autocommit_connections(engine)
    try:
        connection = connections.take()
    except dialect.loaded_dbapi.Error as error:  # the server refused or could not be reached
        raise _as_sqlalchemy_error(error, prepared.sql, dialect, invalidated=False) from error
    dbapi_connection = connection.dbapi_connection
    cursor = None
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute(prepared.sql, parameters)
        found = cursor.fetchone() if prepared.columns else None
        cursor.close()
    except dialect.loaded_dbapi.Error as error:
        dead = dialect.is_disconnect(error, dbapi_connection, cursor)
        if cursor is not None:
            cursor.close()  # a client-side cursor: closing it sends nothing
        if dead:
            connections.discard(connection, error)
        else:
            connections.give_back(connection)
        raise _as_sqlalchemy_error(error, prepared.sql, dialect, invalidated=dead) from error
    except BaseException as error:  # interrupted mid-statement: the connection's state is unknown
        connections.discard(connection, error)
        raise
    connections.give_back(connection)
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
