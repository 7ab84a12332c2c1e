"""The shared send rate limiter: N sends per sliding minute per recipient and overall, never N + 1."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Update

from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.models import EmailRateSlot
from webapp.services.email import ratelimit

T0 = datetime(2030, 1, 1, 12, 0, 0)
MINUTE = timedelta(minutes=1)
TICK = timedelta(microseconds=1)
ANN = "ann@example.com"


def send(address=ANN, *, now=T0, per_recipient=10, global_limit=100) -> None:
    ratelimit.reserve(address, now=now, per_recipient=per_recipient, global_limit=global_limit)


def slots(scope: str) -> int:
    count = db.session.execute(select(func.count()).where(EmailRateSlot.scope == scope)).scalar()
    db.session.rollback()
    return count


@pytest.fixture(autouse=True)
def never_prune_by_chance(monkeypatch):
    """Reservations prune now and then at random; these tests decide when it happens."""
    monkeypatch.setattr(ratelimit, "random", SimpleNamespace(random=lambda: 0.5))


def test_a_limit_of_zero_or_less_means_unlimited(sqlite_app):
    for n in range(30):
        send(now=T0 + n * TICK, per_recipient=0, global_limit=-1)

    assert ratelimit.sends_in_window(ANN, T0) == 0  # nothing was even counted
    for n in range(3):
        send(f"r{n}@example.com", per_recipient=0, global_limit=3)
    with pytest.raises(Deferral, match="global email rate limit of 3/min"):
        send("r4@example.com", per_recipient=0, global_limit=3)


def test_the_limit_is_reached_at_n_sends_and_defers_until_the_oldest_slot_frees(sqlite_app):
    send(now=T0, per_recipient=2)
    send(now=T0 + timedelta(seconds=10), per_recipient=2)

    with pytest.raises(Deferral, match="per-recipient email rate limit of 2/min") as deferred:
        send(now=T0 + timedelta(seconds=20), per_recipient=2)

    assert deferred.value.until == T0 + MINUTE
    assert ratelimit.sends_in_window(ANN, T0 + timedelta(seconds=20)) == 2


def test_a_slot_frees_exactly_one_minute_after_it_was_used(sqlite_app):
    send(now=T0, per_recipient=1)

    with pytest.raises(Deferral) as deferred:
        send(now=T0 + MINUTE - TICK, per_recipient=1)
    assert deferred.value.until == T0 + MINUTE
    send(now=T0 + MINUTE, per_recipient=1)  # the sliding minute has passed: allowed


def test_a_lowered_limit_never_lets_the_old_number_of_sends_through(sqlite_app):
    for n in range(3):
        send(now=T0 + n * TICK, per_recipient=3)
    later = T0 + 2 * MINUTE

    send(now=later, per_recipient=2)
    send(now=later + TICK, per_recipient=2)
    with pytest.raises(Deferral):
        send(now=later + 2 * TICK, per_recipient=2)
    assert ratelimit.sends_in_window(ANN, later + 2 * TICK) == 2


def test_a_raised_limit_makes_room_at_once(sqlite_app):
    send(now=T0, per_recipient=1)

    send(now=T0 + TICK, per_recipient=2)

    assert ratelimit.sends_in_window(ANN, T0 + TICK) == 2


def test_prune_forgets_recipients_idle_for_an_hour_and_keeps_the_global_scope(sqlite_app):
    ann_scope, bob_scope = ratelimit.recipient_scope(ANN), ratelimit.recipient_scope("bob@example.com")
    send(ANN, now=T0, per_recipient=1, global_limit=1)
    send("bob@example.com", now=T0 + 30 * MINUTE, per_recipient=1, global_limit=1)
    hour_later = T0 + timedelta(hours=1)

    assert ratelimit.prune(hour_later) == 0  # idle for exactly an hour: kept
    assert ratelimit.prune(hour_later + TICK) == 1

    assert (slots(ann_scope), slots(bob_scope), slots(ratelimit.GLOBAL)) == (0, 1, 1)
    send(ANN, now=hour_later + TICK, per_recipient=1, global_limit=1)  # a pruned slot is a free one
    assert slots(ann_scope) == 1


def test_a_reservation_now_and_then_prunes_old_slots(sqlite_app, monkeypatch):
    send("old@example.com", now=T0, per_recipient=1)
    day_later = T0 + timedelta(days=1)
    old_scope = ratelimit.recipient_scope("old@example.com")

    send(now=day_later)  # the dice say no
    assert slots(old_scope) == 1
    monkeypatch.setattr(ratelimit, "random", SimpleNamespace(random=lambda: 0.0))
    send(now=day_later + TICK)  # the dice say yes
    assert slots(old_scope) == 0


def test_prune_that_fails_gives_up_quietly_and_leaves_the_session_usable(sqlite_app, monkeypatch):
    send(now=T0, per_recipient=1)

    def locked(*args, **kwargs):
        raise OperationalError("DELETE FROM email_rate_slots", {}, Exception("database is locked"))

    with monkeypatch.context() as patch:
        patch.setattr(db.session, "execute", locked)
        assert ratelimit.prune(T0 + timedelta(days=1)) == 0

    assert slots(ratelimit.recipient_scope(ANN)) == 1
    send(now=T0 + timedelta(days=1), per_recipient=1)


def losing_races(monkeypatch, losses: int) -> list[int]:
    """Another worker takes each slot this one is about to take, ``losses`` times in a row."""
    lost: list[int] = []
    real_execute = db.session.execute

    def execute(statement, *args, **kwargs):
        if isinstance(statement, Update) and statement.table.name == "email_rate_slots" and len(lost) < losses:
            lost.append(1)
            return SimpleNamespace(rowcount=0)  # the conditional UPDATE found the slot taken
        return real_execute(statement, *args, **kwargs)

    monkeypatch.setattr(db.session, "execute", execute)
    return lost


def test_a_worker_that_loses_seven_races_in_a_row_still_sends(sqlite_app, monkeypatch):
    send(now=T0 - 2 * MINUTE, per_recipient=20)  # the scope's slots exist already
    lost = losing_races(monkeypatch, 7)

    send(now=T0, per_recipient=20)

    assert len(lost) == 7
    monkeypatch.undo()
    assert ratelimit.sends_in_window(ANN, T0) == 1


def test_a_worker_that_loses_eight_races_in_a_row_defers_the_send_a_moment(sqlite_app, monkeypatch):
    send(now=T0 - 2 * MINUTE, per_recipient=20)
    losing_races(monkeypatch, 8)

    with pytest.raises(Deferral) as deferred:
        send(now=T0, per_recipient=20)

    assert T0 < deferred.value.until <= T0 + timedelta(seconds=1)
    monkeypatch.undo()
    assert ratelimit.sends_in_window(ANN, T0) == 0


def test_a_database_error_while_reserving_gives_every_slot_back_and_is_raised(sqlite_app, monkeypatch):
    real_execute = db.session.execute

    def execute(statement, *args, **kwargs):
        if isinstance(statement, Update) and statement.table.name == "email_rate_slots":
            updates.append(1)
            if len(updates) == 2:  # the global slot, after the recipient's was taken
                raise OperationalError("UPDATE email_rate_slots", {}, Exception("disk I/O error"))
        return real_execute(statement, *args, **kwargs)

    send(now=T0 - 2 * MINUTE)  # both scopes' slots exist
    updates: list[int] = []
    monkeypatch.setattr(db.session, "execute", execute)

    with pytest.raises(OperationalError):
        send(now=T0)

    assert ratelimit.sends_in_window(ANN, T0) == 0


def test_a_send_counts_in_the_window_for_exactly_one_minute(sqlite_app):
    send(now=T0)

    assert ratelimit.sends_in_window(ANN, T0 + MINUTE - TICK) == 1
    assert ratelimit.sends_in_window(None, T0 + MINUTE - TICK) == 1
    assert ratelimit.sends_in_window(ANN, T0 + MINUTE) == 0
