"""Log-in throttling that holds against many emails, a hash that never holds the write lock, pruning."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from tests.conftest import inside, make_app
from tests.support.console import PASSWORD, IsolatedClient, login
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import FailedLogin, FailedLoginAddress
from webapp.services.console import admins
from webapp.services.maintenance import cleanup


def test_failures_with_a_new_email_each_time_lock_the_address(sqlite_backend):
    app = make_app(sqlite_backend, LOGIN_MAX_FAILURES_PER_ADDRESS=4)
    app.test_client_class = IsolatedClient
    with inside(app):
        admins.create_admin("admin@example.com", PASSWORD)
        for n in range(3):
            assert login(app.test_client(), email=f"guess{n}@example.com", password="wrong").status_code == 401
        assert login(app.test_client(), email="guess3@example.com", password="wrong").status_code == 429
        # Not one email has reached LOGIN_MAX_FAILURES, yet the address is locked, even for a right password.
        locked = login(app.test_client())
        assert locked.status_code == 429 and "Too many failed attempts" in locked.text
        # Another address still gets in.
        assert login(app.test_client(), environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 302
        # The lock lifts after LOGIN_LOCK_MINUTES.
        later = utcnow() + timedelta(minutes=15, seconds=1)
        assert admins.log_in("admin@example.com", PASSWORD, "127.0.0.1", now=later).user is not None


def test_the_password_hash_runs_outside_any_write_transaction(sqlite_app, admin, monkeypatch):
    path = sqlite_app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    probes = []
    real_check = admins.check_password_hash

    def check_while_probing(stored, given):
        # Another connection that will not wait: it gets the write lock only if nobody holds it.
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            probes.append("free")
        except sqlite3.OperationalError as exc:
            probes.append(str(exc))
        finally:
            other.close()
        return real_check(stored, given)

    monkeypatch.setattr(admins, "check_password_hash", check_while_probing)
    client = sqlite_app.test_client()
    assert login(client, password="wrong password").status_code == 401
    assert login(client).status_code == 302
    assert login(sqlite_app.test_client(), email="nobody@example.com").status_code == 401
    assert probes == ["free", "free", "free"]


def test_cleanup_prunes_failed_logins_whose_lock_and_window_are_over(sqlite_app):
    now = utcnow()
    for n, (ago, locked_until) in enumerate(
        [
            (timedelta(days=8), None),  # old: pruned
            (timedelta(days=8), now + timedelta(minutes=5)),  # old but still locked: kept
            (timedelta(hours=1), None),  # recent: kept
        ]
    ):
        db.session.add(
            FailedLogin(
                email=f"x{n}@example.com",
                ip="127.0.0.1",
                failures=1,
                first_failed_at=now - ago,
                last_failed_at=now - ago,
                locked_until=locked_until,
            )
        )
    db.session.commit()
    for n in range(3):
        admins.log_in(f"spray{n}@example.com", "wrong", "192.0.2.1", now=now - timedelta(days=8))
    report = cleanup.cleanup(now, sqlite_app.config)
    assert report.failed_logins == 5  # x0, the three sprayed pairs and the sprayed address
    emails = set(db.session.execute(select(FailedLogin.email)).scalars())
    assert emails == {"x1@example.com", "x2@example.com"}
    assert db.session.execute(select(func.count()).select_from(FailedLoginAddress)).scalar_one() == 0
    db.session.rollback()


def test_the_lock_message_gives_the_true_number_of_minutes(sqlite_app, admin):
    client = sqlite_app.test_client()
    for _ in range(4):
        assert login(client, password="wrong password").status_code == 401
    locking = login(client, password="wrong password")  # the fifth failure sets a 15-minute lock
    assert locking.status_code == 429
    assert "Try again in 15 minutes." in locking.text
    now = utcnow()
    until = now + timedelta(minutes=1)
    assert admins.lock_message(until, now).endswith("Try again in 1 minute.")
    assert admins.lock_message(until - timedelta(seconds=59), now).endswith("Try again in 1 minute.")
    assert admins.lock_message(until + timedelta(seconds=1), now).endswith("Try again in 2 minutes.")


def test_the_unknown_email_hash_costs_what_a_real_one_costs():
    # An unknown email is checked against DUMMY_HASH so both paths take the same time: its method
    # and work factors must be those a new admin's hash gets (a Werkzeug upgrade may change them).
    fresh = generate_password_hash("any password at all")
    assert admins.DUMMY_HASH.split("$")[0] == fresh.split("$")[0]
    assert len(admins.DUMMY_HASH) == len(fresh)
    assert not check_password_hash(admins.DUMMY_HASH, "")
