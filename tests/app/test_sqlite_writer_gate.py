"""SQLite writers take turns through Backstop's gate: a thread lock, then a file lock between processes,
given back however a transaction ends, and a clear "database is locked" error when the wait is too long."""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from webapp import database
from webapp.extensions import db

HOLD_THE_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def short_wait(monkeypatch):
    """Writers give up after a fraction of a second instead of 30 s."""
    monkeypatch.setattr(database, "WRITER_WAIT_SECONDS", 0.3)


def lock_path(app) -> str:
    return database.os.path.realpath(make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database) + ".writer-lock"


def write(app) -> None:
    """One write transaction in a session of its own (another thread's)."""
    with app.app_context():
        try:
            db.session.execute(text("UPDATE operations SET attempts = attempts WHERE 1 = 0"))
            db.session.commit()
        finally:
            db.session.remove()


def write_in_thread(app) -> BaseException | None:
    failure: list[BaseException] = []

    def run():
        try:
            write(app)
        except BaseException as exc:  # reported to the test
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return failure[0] if failure else None


@contextmanager
def another_process_holding_the_turn(app):
    """A separate process holds the database's writer file lock until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, lock_path(app)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.communicate("done\n", timeout=30)


def test_a_writer_waits_while_another_process_holds_the_turn(sqlite_app, short_wait):
    with another_process_holding_the_turn(sqlite_app), pytest.raises(OperationalError, match="database is locked"):
        write(sqlite_app)
    write(sqlite_app)  # the turn is free again


@pytest.mark.parametrize("ending", ["commit", "rollback", "invalidate", "close"])
def test_the_turn_is_given_back_however_a_transaction_ends(sqlite_app, short_wait, ending):
    db.session.execute(text("UPDATE operations SET attempts = attempts WHERE 1 = 0"))
    assert write_in_thread(sqlite_app) is not None  # held: another thread cannot write meanwhile
    if ending == "invalidate":
        db.session.connection().invalidate()
        db.session.rollback()
    elif ending == "close":
        db.session.close()
    else:
        getattr(db.session, ending)()

    assert write_in_thread(sqlite_app) is None


def test_a_failed_begin_gives_the_turn_back(sqlite_app, short_wait):
    with another_process_holding_the_turn(sqlite_app):
        assert isinstance(write_in_thread(sqlite_app), OperationalError)
    # The thread that timed out on the file lock let go of the thread lock too.
    assert write_in_thread(sqlite_app) is None


def test_the_log_is_checkpointed_outside_the_turn_before_the_connection_next_asks_for_it(sqlite_app, monkeypatch):
    monkeypatch.setattr(database, "CHECKPOINT_EVERY_COMMITS", 3)
    steps = []
    give_back, checkpoint = database.GatedConnection._give_back, database.GatedConnection._checkpoint

    def noted_give_back(connection):
        if connection.holds_gate:
            steps.append("turn given back")
        give_back(connection)

    def noted_checkpoint(connection):
        steps.append("checkpoint")
        checkpoint(connection)

    monkeypatch.setattr(database.GatedConnection, "_give_back", noted_give_back)
    monkeypatch.setattr(database.GatedConnection, "_checkpoint", noted_checkpoint)
    for _ in range(7):
        write(sqlite_app)

    # Due at every third commit, run when the connection next begins, before it takes the turn.
    assert steps == (["turn given back"] * 3 + ["checkpoint"]) * 2 + ["turn given back"]
    # SQLite's own checkpoint, inside a COMMIT, is only the backstop for an outsized log.
    with sqlite_app.app_context(), db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 10_000
