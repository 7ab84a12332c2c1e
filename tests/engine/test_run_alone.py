"""One statement as its own transaction, straight on the driver (PostgreSQL's hot paths)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import bindparam, create_engine, event, func, literal, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from tests.engine.scripted import T0
from tests.support.postgres import postgres_app, statements_sent
from webapp.database import PING_AFTER_IDLE_SECONDS
from webapp.extensions import db
from webapp.models import Operation, StripeEvent
from webapp.services.engine.sql import (
    AutocommitConnections,
    _forget_after_fork,
    autocommit_connections,
    prepare,
    prepared_insert,
    run_alone,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EVENTS = StripeEvent.__table__


@pytest.fixture
def pg_app(tmp_path, templates):
    """App on PostgreSQL + RedisHuey."""
    with postgres_app(tmp_path, templates) as app:
        yield app


def event_row(event_id: str) -> dict:
    """A stored-event row with every column the insert writes."""
    return {
        "id": event_id,
        "type": "test.thing",
        "livemode": False,
        "api_version": None,
        "object_id": None,
        "payload": "{}",
        "received_at": T0,
        "processing_state": "ignored",
        "operation_id": None,
        "processed_at": T0,
    }


def admin_connection() -> psycopg.Connection:
    """A connection to this test's database outside every pool (use it in a ``with``)."""
    return psycopg.connect(
        db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    )


def insert_event():
    return prepared_insert(EVENTS, db.engine.dialect, tuple(event_row("x")), (EVENTS.c.id,), ignore_conflicts=True)


def test_a_statement_commits_on_its_own_and_gives_back_its_first_row_by_column_name(pg_app):
    assert run_alone(insert_event(), event_row("evt_1")) == {"id": "evt_1"}
    assert run_alone(insert_event(), event_row("evt_1")) is None  # the conflict inserts nothing

    db.session.rollback()  # another connection sees it: it was committed, not left in a transaction
    assert db.session.execute(select(EVENTS.c.id)).scalars().all() == ["evt_1"]


def test_literals_and_results_are_converted_as_sqlalchemy_converts_them(pg_app):
    document = bindparam("document", type_=Operation.__table__.c.payload.type)
    statement = select(literal("running").label("state"), document.label("document"), bindparam("when").label("when"))

    found = run_alone(prepare(statement, db.engine.dialect), {"document": {"a": [1, "b"]}, "when": T0})

    assert found == {"state": "running", "document": {"a": [1, "b"]}, "when": T0}


def test_a_failing_statement_raises_sqlalchemys_error_without_its_parameters(pg_app):
    run_alone(insert_event(), event_row("evt_1"))
    duplicate = prepared_insert(EVENTS, db.engine.dialect, tuple(event_row("x")), (EVENTS.c.id,))
    with pytest.raises(IntegrityError) as raised:
        run_alone(duplicate, event_row("evt_1") | {"payload": "secret-card-data"})
    assert "secret-card-data" not in str(raised.value)


def test_the_connection_goes_back_to_the_pool_in_transactions_again(pg_app):
    run_alone(insert_event(), event_row("evt_1"))
    for _ in range(db.engine.pool.size() + 1):  # whichever pooled connection the session gets
        with db.engine.connect() as connection:
            connection.execute(text("DELETE FROM stripe_events"))
            connection.rollback()
            assert connection.execute(text("SELECT count(*) FROM stripe_events")).scalar() == 1


def test_a_connection_the_server_killed_is_discarded_and_the_next_statement_gets_a_new_one(pg_app):
    run_alone(insert_event(), event_row("evt_1"))
    pooled = db.engine.pool.checkedin()
    with admin_connection() as admin:  # outside the pool: kill every pooled one
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert pooled >= 1
    failures = 0
    for number in range(2, pooled + 4):  # each dead pooled connection fails once, then is replaced
        try:
            assert run_alone(insert_event(), event_row(f"evt_{number}")) == {"id": f"evt_{number}"}
        except OperationalError as error:
            assert error.connection_invalidated
            failures += 1
    assert 1 <= failures <= pooled + 1
    assert run_alone(insert_event(), event_row("evt_last")) == {"id": "evt_last"}


def test_run_alone_refuses_sqlite_whose_writers_take_turns(sqlite_app):
    with pytest.raises(ValueError, match="PostgreSQL"):
        run_alone(insert_event(), event_row("evt_1"))


def test_a_statement_missing_a_parameter_is_refused_before_it_is_sent(pg_app):
    row = event_row("evt_1")
    del row["payload"]
    with pytest.raises(KeyError, match="payload"):
        run_alone(insert_event(), row)
    assert db.session.execute(select(EVENTS.c.id)).scalars().all() == []


def test_a_server_that_cannot_be_reached_raises_sqlalchemys_error(pg_app, monkeypatch):
    unreachable = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    monkeypatch.setattr(type(db), "engine", property(lambda self: unreachable))
    with pytest.raises(OperationalError) as raised:
        run_alone(insert_event(), event_row("evt_1"))
    assert not raised.value.connection_invalidated  # nothing was connected to invalidate


def backend_pid() -> int:
    return run_alone(prepare(select(func.pg_backend_pid().label("pid")), db.engine.dialect), {})["pid"]


def test_a_statement_that_fails_on_a_live_connection_keeps_the_connection(pg_app):
    run_alone(insert_event(), event_row("evt_1"))
    pid = backend_pid()
    duplicate = prepared_insert(EVENTS, db.engine.dialect, tuple(event_row("x")), (EVENTS.c.id,))
    with pytest.raises(IntegrityError) as raised:
        run_alone(duplicate, event_row("evt_1"))

    assert not raised.value.connection_invalidated
    assert backend_pid() == pid  # the same server process: the pooled connection was kept


def side() -> AutocommitConnections:
    return autocommit_connections(db.engine)


def backends() -> set[int]:
    """The server processes connected to this test's database, other than the one asking."""
    with admin_connection() as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return {pid for (pid,) in rows}


def terminate(pid: int) -> None:
    with admin_connection() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_statements_never_take_a_connection_from_the_engines_pool(pg_app):
    db.session.execute(text("SELECT 1"))  # the session holds one of the pool's connections
    session_pid = db.session.execute(select(func.pg_backend_pid())).scalar()
    checked_out = db.engine.pool.checkedout()

    assert backend_pid() != session_pid
    assert db.engine.pool.checkedout() == checked_out
    assert db.session.connection().connection.dbapi_connection.autocommit is False


def test_a_connection_closed_while_it_waited_raises_sqlalchemys_error_and_is_replaced(pg_app):
    pid = backend_pid()
    [(connection, _)] = side().idle
    connection.dbapi_connection.close()  # it died while it sat idle

    with pytest.raises(OperationalError) as raised:
        run_alone(insert_event(), event_row("evt_1"))

    assert raised.value.connection_invalidated
    assert backend_pid() != pid
    assert run_alone(insert_event(), event_row("evt_1")) == {"id": "evt_1"}


def test_one_idle_for_long_is_pinged_and_a_dead_one_replaced_before_the_statement(pg_app):
    pid = backend_pid()
    terminate(pid)  # a server restart or an idle timeout while it waited
    [(connection, since)] = side().idle
    side().idle[0] = (connection, since - PING_AFTER_IDLE_SECONDS)

    assert run_alone(insert_event(), event_row("evt_1")) == {"id": "evt_1"}  # no failure: pinged first
    assert backend_pid() != pid


def test_one_used_a_moment_ago_is_not_pinged_and_one_idle_for_long_is(pg_app):
    with statements_sent(db.engine) as sent:
        backend_pid()  # a new connection, watched from now on
        backend_pid()  # the same one, idle a moment
        [(connection, since)] = side().idle
        side().idle[0] = (connection, since - PING_AFTER_IDLE_SECONDS)
        backend_pid()  # the same one, idle for long

    pid = "SELECT pg_backend_pid() AS pid"
    assert sent == [(True, pid), (True, pid), (True, "SELECT 1"), (True, pid)]


def test_threads_get_a_connection_each_and_at_most_the_pool_size_wait_idle(pg_app):
    ready = threading.Barrier(db.engine.pool.size() + 2)

    def statement(number: int) -> int:
        with pg_app.app_context():
            ready.wait(timeout=10)
            run_alone(insert_event(), event_row(f"evt_{number}"))
            return backend_pid()

    with ThreadPoolExecutor(ready.parties) as pool:
        pids = list(pool.map(statement, range(ready.parties)))

    assert db.session.execute(select(func.count()).select_from(EVENTS)).scalar() == ready.parties
    assert len(side().idle) <= side().keep == db.engine.pool.size()
    # The ones beyond it were closed, not left idle in the copy of the pool.
    assert len(backends()) <= side().keep + db.engine.pool.checkedin() + db.engine.pool.checkedout()
    assert len(set(pids)) >= 2  # concurrent statements did not share a connection


def test_disposing_of_the_engine_closes_them(pg_app):
    pid = backend_pid()
    assert pid in backends()

    db.engine.dispose()

    assert pid not in backends()
    assert run_alone(insert_event(), event_row("evt_1")) == {"id": "evt_1"}  # new ones are made


def test_a_forked_child_starts_without_its_parents_connections_and_leaves_them_open(pg_app):
    pid = backend_pid()
    parents = side()

    _forget_after_fork()  # what os.fork runs in the child

    assert side() is not parents
    assert backend_pid() != pid
    assert pid in backends()  # the parent's session is still there


def test_a_new_connection_that_cannot_be_put_in_autocommit_raises_sqlalchemys_error(pg_app):
    side().discard_idle()

    def closed_at_once(dbapi_connection, connection_record, connection_proxy):
        dbapi_connection.close()  # it died between being made and its first statement

    event.listen(side().pool, "checkout", closed_at_once, once=True)
    with pytest.raises(OperationalError):
        run_alone(insert_event(), event_row("evt_1"))

    assert side().idle == [] and side().pool.checkedout() == 0  # discarded, neither kept nor leaked
    assert run_alone(insert_event(), event_row("evt_1")) == {"id": "evt_1"}


def test_a_statement_interrupted_by_anything_else_discards_its_connection(pg_app):
    pid = backend_pid()
    [(connection, _)] = side().idle

    class Interrupted(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            raise KeyboardInterrupt  # as a signal handler's exception would, mid-statement

    connection.dbapi_connection.cursor_factory = Interrupted
    with pytest.raises(KeyboardInterrupt):
        run_alone(insert_event(), event_row("evt_1"))

    assert not connection.is_valid and side().idle == []
    assert backend_pid() != pid


def test_closing_them_closes_the_idle_ones_and_any_given_back_later(pg_app):
    connections = side()
    busy = connections.take()  # a statement still running when the engine is disposed of
    backend_pid()  # another connection, idle after its statement
    [(idle, _)] = connections.idle

    db.engine.dispose()

    assert not idle.is_valid and connections.idle == []
    connections.give_back(busy)
    assert not busy.is_valid and connections.idle == []
