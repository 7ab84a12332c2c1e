"""Server-side admin sessions: a saved cookie stops working at logout, password change, idle and lifetime."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.conftest import inside, make_app
from tests.support.console import PASSWORD, IsolatedClient, csrf_from, login
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminSession
from webapp.services.console import admins, sessions
from webapp.services.maintenance import cleanup

PAGE = "/admin/failed-operations"


def _saved_cookie(client) -> str:
    return client.get_cookie("session").value


def _replayed(app, cookie: str):
    """A fresh client presenting a session cookie saved earlier (as a thief or a back-up would)."""
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    return thief.get(PAGE)


def test_a_cookie_saved_before_logout_no_longer_opens_admin_pages(sqlite_app, admin):
    client = sqlite_app.test_client()
    assert login(client).status_code == 302
    saved = _saved_cookie(client)
    assert _replayed(sqlite_app, saved).status_code == 200
    token = csrf_from(client.get(PAGE).text)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    replay = _replayed(sqlite_app, saved)
    assert replay.status_code == 302 and "/admin/login" in replay.headers["Location"]
    assert db.session.execute(select(AdminSession.revoked_at)).scalar_one() is not None
    db.session.rollback()


def test_a_password_change_ends_every_session_of_that_admin(sqlite_app, admin):
    first, second = sqlite_app.test_client(), sqlite_app.test_client()
    assert login(first).status_code == 302 and login(second).status_code == 302
    other = admins.create_admin("other@example.com", PASSWORD)
    third = sqlite_app.test_client()
    assert login(third, email=other.email).status_code == 302
    result = sqlite_app.test_cli_runner().invoke(
        args=["set-password", "admin@example.com", "--password", "a new one!!"]
    )
    assert result.exit_code == 0, result.output
    assert "2 sessions ended" in result.output
    assert first.get(PAGE).status_code == 302 and second.get(PAGE).status_code == 302
    assert third.get(PAGE).status_code == 200  # another admin's session is untouched
    assert login(sqlite_app.test_client(), password="a new one!!").status_code == 302


def test_sessions_end_after_the_idle_timeout_and_the_absolute_lifetime(sqlite_backend):
    app = make_app(sqlite_backend, ADMIN_SESSION_IDLE_MINUTES=30, ADMIN_SESSION_MAX_HOURS=8)
    app.test_client_class = IsolatedClient
    with inside(app):
        user = admins.create_admin("admin@example.com", PASSWORD)
        now = utcnow()
        token = sessions.start(user.id, now=now)
        settings = dict(idle=timedelta(minutes=30), lifetime=timedelta(hours=8))
        # Used every 20 minutes it stays open...
        moment = now
        for _ in range(20):
            moment += timedelta(minutes=20)
            if moment >= now + timedelta(hours=8):
                break
            assert sessions.resolve(token, now=moment, **settings) is not None, moment - now
        # ...until the absolute lifetime, however active it is.
        assert sessions.resolve(token, now=now + timedelta(hours=8, minutes=1), **settings) is None
        idle = sessions.start(user.id, now=now)
        assert sessions.resolve(idle, now=now + timedelta(minutes=29), **settings) is not None
        assert sessions.resolve(idle, now=now + timedelta(minutes=29 + 31), **settings) is None
        # A session id that was never issued opens nothing.
        assert sessions.resolve("forged", now=now, **settings) is None
        # Through HTTP, with the configured settings.
        client = app.test_client()
        assert login(client).status_code == 302
        assert client.get(PAGE).status_code == 200
        db.session.execute(AdminSession.__table__.update().values(last_seen_at=utcnow() - timedelta(minutes=31)))
        db.session.commit()
        assert client.get(PAGE).status_code == 302


def test_cleanup_deletes_sessions_that_can_never_be_used_again(sqlite_app, admin):
    now = utcnow()
    live = sessions.start(admin.id, now=now)
    revoked = sessions.start(admin.id, now=now)
    sessions.revoke(revoked, now=now)
    sessions.start(admin.id, now=now - timedelta(hours=2))  # idle past the 60-minute default
    report = cleanup.cleanup(now, sqlite_app.config)
    assert report.admin_sessions == 2
    assert db.session.execute(select(AdminSession.token_hash)).scalars().all() == [sessions.token_hash(live)]
    db.session.rollback()
