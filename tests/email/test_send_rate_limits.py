"""The shared send rate limiter (GCRA): N at once, then one every minute / N, never more, at a constant cost."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Update

from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.models import EmailRateLimit
from webapp.services.email import ratelimit

T0 = datetime(2030, 1, 1, 12, 0, 0)
MINUTE = timedelta(minutes=1)
TICK = timedelta(microseconds=1)
T0_UNIX_US = 1_893_499_200_000_000  # T0 as microseconds since 1970-01-01 UTC
ANN = "ann@example.com"


def send(address=ANN, *, now=T0, per_recipient=10, global_limit=100) -> None:
    ratelimit.reserve(address, now=now, per_recipient=per_recipient, global_limit=global_limit)


def deferral(address=ANN, *, now=T0, per_recipient=10, global_limit=100) -> Deferral:
    with pytest.raises(Deferral) as deferred:
        send(address, now=now, per_recipient=per_recipient, global_limit=global_limit)
    return deferred.value


def rows() -> int:
    count = db.session.execute(select(func.count()).select_from(EmailRateLimit)).scalar()
    db.session.rollback()
    return count


@contextmanager
def counting_statements():
    """Count the SQL statements sent to the database, and the rows they changed, while inside."""
    seen = {"statements": 0, "rows": 0, "sql": []}

    def before(conn, cursor, statement, parameters, context, executemany):
        seen["statements"] += 1
        seen["sql"].append(statement.split()[0].upper())

    def after(conn, cursor, statement, parameters, context, executemany):
        seen["rows"] += max(cursor.rowcount, 0)

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(db.engine, "after_cursor_execute", after)


# --- limits and deferrals ---------------------------------------------------------------------


def test_a_limit_of_zero_or_less_means_unlimited_and_costs_nothing(sqlite_app):
    with counting_statements() as seen:
        for n in range(30):
            send(now=T0 + n * TICK, per_recipient=0, global_limit=-1)

    assert seen["statements"] == 0 and rows() == 0  # nothing was even counted
    for n in range(3):
        send(f"r{n}@example.com", per_recipient=0, global_limit=3)
    with pytest.raises(Deferral, match="global email rate limit of 3/min"):
        send("r4@example.com", per_recipient=0, global_limit=3)


def test_an_idle_scope_sends_its_limit_at_once_then_defers_until_the_next_interval(sqlite_app):
    send(now=T0, per_recipient=2)
    send(now=T0 + timedelta(seconds=10), per_recipient=2)

    deferred = deferral(now=T0 + timedelta(seconds=20), per_recipient=2)

    assert deferred.reason == "per-recipient email rate limit of 2/min reached"
    assert deferred.until == T0 + timedelta(seconds=30)  # 2/min: one send frees every 30 s
    assert ratelimit.sends_in_use(ANN, T0 + timedelta(seconds=20), 2) == 2


def test_a_send_frees_exactly_when_gcra_says(sqlite_app):
    for _ in range(3):
        send(now=T0, per_recipient=3)  # a burst of three: the scope is full until T0 + 20 s

    assert deferral(now=T0 + timedelta(seconds=20) - TICK, per_recipient=3).until == T0 + timedelta(seconds=20)
    send(now=T0 + timedelta(seconds=20), per_recipient=3)
    assert deferral(now=T0 + timedelta(seconds=20), per_recipient=3).until == T0 + timedelta(seconds=40)


def test_a_limit_of_one_frees_one_minute_after_the_send(sqlite_app):
    send(now=T0, per_recipient=1)

    assert deferral(now=T0 + MINUTE - TICK, per_recipient=1).until == T0 + MINUTE
    send(now=T0 + MINUTE, per_recipient=1)


def test_never_more_than_the_limit_at_once_and_never_faster_than_the_rate(sqlite_app):
    allowed = []
    for n in range(240):  # two minutes, a try every half second, at 10/min
        now = T0 + n * timedelta(seconds=0.5)
        try:
            send(now=now, per_recipient=10)
            allowed.append(now)
        except Deferral as deferred:
            assert deferred.until > now

    assert allowed[:10] == [T0 + n * timedelta(seconds=0.5) for n in range(10)]  # the burst
    assert len(allowed) == 10 + 2 * 10 - 1  # then one every 6 s: at 6 s after the first, 12 s, ...
    assert all(b - a >= timedelta(seconds=6) for a, b in zip(allowed[10:], allowed[11:], strict=False))


def test_a_lowered_limit_lets_at_most_the_new_limit_through(sqlite_app):
    for n in range(3):
        send(now=T0 + n * TICK, per_recipient=3)
    assert deferral(now=T0 + 3 * TICK, per_recipient=1).until == T0 + MINUTE  # busy: wait at the new rate
    later = T0 + 2 * MINUTE

    send(now=later, per_recipient=2)
    send(now=later + TICK, per_recipient=2)
    with pytest.raises(Deferral):
        send(now=later + 2 * TICK, per_recipient=2)
    assert ratelimit.sends_in_use(ANN, later + 2 * TICK, 2) == 2


def test_a_raised_limit_frees_sends_at_the_new_rate_at_once(sqlite_app):
    send(now=T0, per_recipient=1)  # the whole minute of a 1/min scope is used

    # A full minute stays full under any limit (GCRA keeps time, not a count), but frees at the new rate.
    assert deferral(now=T0 + TICK, per_recipient=2).until == T0 + timedelta(seconds=30)
    assert deferral(now=T0 + TICK, per_recipient=4).until == T0 + timedelta(seconds=15)
    send(now=T0 + timedelta(seconds=15), per_recipient=4)


def test_limits_that_do_not_divide_a_minute_round_the_interval_up(sqlite_app):
    for _ in range(7):
        send(now=T0, per_recipient=7)

    # 60 s / 7 = 8.571428571... s: never faster than the limit, so the next send waits 8.571429 s
    # and the burst of seven used 7 x 8.571429 s, three microseconds more than the minute.
    assert deferral(now=T0, per_recipient=7).until == T0 + timedelta(microseconds=8_571_429)
    assert stored_tat(ratelimit.recipient_scope(ANN)) == T0_UNIX_US + 60_000_003
    assert ratelimit.sends_in_use(ANN, T0, 1) == 1  # never more in use than the limit asked about


def stored_tat(scope: str) -> int:
    tat = db.session.execute(select(EmailRateLimit.tat_us).where(EmailRateLimit.scope == scope)).scalar()
    db.session.rollback()
    return tat


def test_the_stored_state_is_the_theoretical_arrival_time_in_unix_microseconds(sqlite_app):
    send(now=T0 + timedelta(microseconds=7), per_recipient=10, global_limit=1)

    # Readable by an operator: 10/min pushes the recipient 6 s on, 1/min the global scope a minute.
    assert stored_tat(ratelimit.recipient_scope(ANN)) == T0_UNIX_US + 7 + 6_000_000
    assert stored_tat(ratelimit.GLOBAL) == T0_UNIX_US + 7 + 60_000_000
    late = datetime(2300, 6, 30, 23, 59, 59, 999_999)  # exact far beyond a float's microseconds
    assert ratelimit.to_micros(late) == 10_429_430_399_999_999
    assert ratelimit.from_micros(10_429_430_399_999_999) == late


def test_an_idle_scope_has_no_send_in_use(sqlite_app):
    send(now=T0, per_recipient=2)

    assert ratelimit.sends_in_use(ANN, T0 + timedelta(seconds=30) - TICK, 2) == 1
    assert ratelimit.sends_in_use(ANN, T0 + timedelta(seconds=30), 2) == 0
    assert ratelimit.sends_in_use(ANN, T0 + timedelta(hours=1), 2) == 0
    assert ratelimit.sends_in_use("nobody@example.com", T0, 2) == 0
    assert ratelimit.sends_in_use(ANN, T0 + timedelta(hours=1), 100_000_000) == 0  # a 1 µs interval too


def test_a_refused_global_send_gives_the_recipient_send_back(sqlite_app):
    send("other@example.com", per_recipient=5, global_limit=1)

    deferred = deferral(per_recipient=5, global_limit=1)

    assert "global email rate limit of 1/min" in str(deferred)
    assert deferred.until == T0 + MINUTE
    assert ratelimit.sends_in_use(ANN, T0, 5) == 0
    assert ratelimit.sends_in_use(None, T0, 1) == 1


def test_scopes_are_per_recipient_whatever_the_case_and_spaces(sqlite_app):
    send(" Ann@Example.COM ", per_recipient=1)

    assert deferral(ANN, per_recipient=1).until == T0 + MINUTE
    send("bob@example.com", per_recipient=1)
    assert ratelimit.recipient_scope(ANN).startswith("to:") and "ann" not in ratelimit.recipient_scope(ANN)


def test_a_database_error_while_reserving_gives_every_send_back_and_is_raised(sqlite_app, monkeypatch):
    real_execute = db.session.execute

    def execute(statement, *args, **kwargs):
        if isinstance(statement, Update) and statement.table.name == "email_rate_limits":
            updates.append(1)
            if len(updates) == 2:  # the global scope, after the recipient's send was taken
                raise OperationalError("UPDATE email_rate_limits", {}, Exception("disk I/O error"))
        return real_execute(statement, *args, **kwargs)

    send(now=T0 - 2 * MINUTE)  # both scopes' rows exist
    updates: list[int] = []
    monkeypatch.setattr(db.session, "execute", execute)

    with pytest.raises(OperationalError):
        send(now=T0)

    monkeypatch.undo()
    assert ratelimit.sends_in_use(ANN, T0, 10) == 0
    send(now=T0)  # the session is usable again


def test_a_first_send_that_loses_the_insert_race_is_decided_by_the_update(sqlite_app, monkeypatch):
    real_create = ratelimit._create

    def create_after_a_rival(scope, first_tat):
        real_create(scope, ratelimit.to_micros(T0 + MINUTE))  # a rival's full burst got there first
        return real_create(scope, first_tat)

    monkeypatch.setattr(ratelimit, "_create", create_after_a_rival)

    assert deferral(per_recipient=2, global_limit=0).until == T0 + timedelta(seconds=30)
    monkeypatch.undo()
    assert ratelimit.sends_in_use(ANN, T0, 2) == 0  # the rival's row was rolled back with the deferral


def test_a_first_send_racing_a_first_send_that_committed_meanwhile_takes_the_next_one(sqlite_app, monkeypatch):
    real_execute = db.session.execute
    reads: list[int] = []

    def execute(statement, *args, **kwargs):
        if statement is ratelimit._READ and not reads:  # the rival commits its first send just before
            reads.append(1)
            real_execute(ratelimit._CREATE["sqlite"], {"key": ratelimit.recipient_scope(ANN), "first_tat": rival})
        return real_execute(statement, *args, **kwargs)

    rival = ratelimit.to_micros(T0 + timedelta(seconds=30))  # one send of two, at 2/min
    monkeypatch.setattr(db.session, "execute", execute)

    send(per_recipient=2, global_limit=0)  # the row it did not see is there now: room for one more

    monkeypatch.undo()
    assert ratelimit.sends_in_use(ANN, T0, 2) == 2
    assert deferral(per_recipient=2, global_limit=0).until == T0 + timedelta(seconds=30)


def test_a_send_that_keeps_losing_first_send_races_defers_one_interval(sqlite_app, monkeypatch):
    created: list[str] = []

    def lose(scope, first_tat):  # another first send created the row, and cleanup forgot it again
        created.append(scope)
        return False

    monkeypatch.setattr(ratelimit, "_create", lose)

    assert deferral(per_recipient=4, global_limit=0).until == T0 + timedelta(seconds=15)
    assert len(created) == ratelimit.ROUNDS == 2


# --- forgetting idle recipients -----------------------------------------------------------------


def test_cleanup_forgets_recipients_idle_for_an_hour_and_never_the_global_scope(sqlite_app):
    send(ANN, now=T0, per_recipient=1, global_limit=1)  # ann's and the global row: idle from T0 + 1 min
    send("bob@example.com", now=T0 + 30 * MINUTE, per_recipient=1, global_limit=1)
    idle_since = T0 + MINUTE

    assert ratelimit.forget_idle(idle_since + timedelta(hours=1), 10) == 0  # idle for exactly an hour: kept
    assert ratelimit.forget_idle(idle_since + timedelta(hours=1) + TICK, 10) == 1
    assert rows() == 2
    assert ratelimit.sends_in_use(None, T0 + 30 * MINUTE, 1) == 1  # the global row is still there
    assert ratelimit.forget_idle(T0 + timedelta(days=1), 10) == 1  # bob's; the global row stays
    assert (rows(), stored_tat(ratelimit.GLOBAL)) == (1, T0_UNIX_US + 31 * 60_000_000)
    send(ANN, now=T0 + timedelta(days=1), per_recipient=1, global_limit=1)  # a forgotten scope is a fresh one
    assert deferral(ANN, now=T0 + timedelta(days=1), per_recipient=1, global_limit=0).until == T0 + timedelta(
        days=1, minutes=1
    )


def test_forgetting_goes_in_batches_of_the_size_given(sqlite_app):
    for n in range(5):
        send(f"r{n}@example.com", now=T0, global_limit=0)

    assert ratelimit.forget_idle(T0 + timedelta(days=1), 2) == 2
    assert ratelimit.forget_idle(T0 + timedelta(days=1), 2) == 2
    assert ratelimit.forget_idle(T0 + timedelta(days=1), 2) == 1
    assert rows() == 0


# --- the cost of a send does not grow with the limit ------------------------------------------


def test_a_million_a_minute_costs_the_same_per_send_as_ten(sqlite_app):
    costs = {}
    for limit in (10, 1_000_000):
        address = f"limit-{limit}@example.com"
        with counting_statements() as first:
            send(address, now=T0, per_recipient=limit, global_limit=limit)
        with counting_statements() as warm:
            send(address, now=T0 + TICK, per_recipient=limit, global_limit=limit)
        costs[limit] = (first["sql"], warm["sql"], warm["rows"])

    # A scope's first send: UPDATE (no row), SELECT (none), INSERT of its one row; the global
    # scope exists by the second limit's turn. Then one UPDATE of one row per scope, whatever N
    # (SQLite's BEGIN IMMEDIATE goes to the driver from the writer gate, so it is not counted).
    assert costs[10][1:] == costs[1_000_000][1:] == (["UPDATE", "UPDATE"], 2)
    assert costs[10][0] == ["UPDATE", "SELECT", "INSERT"] * 2
    assert costs[1_000_000][0] == ["UPDATE", "SELECT", "INSERT", "UPDATE"]
    assert rows() == 3  # one row per scope: two recipients and the global scope


def test_the_cost_stays_constant_after_a_thousand_sends(sqlite_app):
    limit = 1_000_000
    for _ in range(1000):
        send(now=T0, per_recipient=limit, global_limit=limit)

    with counting_statements() as seen:
        send(now=T0, per_recipient=limit, global_limit=limit)

    assert (seen["sql"], seen["rows"]) == (["UPDATE", "UPDATE"], 2)
    assert rows() == 2
    assert (
        ratelimit.sends_in_use(ANN, T0, limit) == ratelimit.sends_in_use(None, T0, limit) == 1001
    )  # all counted, none forgotten
