"""Who may use the console: log-in and log-out, throttling, CSRF, every route behind a login, proxies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import make_app
from tests.support.console import ACTIONS, PAGES, PARTIALS, PASSWORD, IsolatedClient, csrf_from, login, make_op, post
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import AdminUser, FailedLogin, Operation
from webapp.services.access import tokens
from webapp.services.console import admins

# --- access -------------------------------------------------------------------------------


def test_index_redirects_to_dashboard(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/operations-health")


def test_anonymous_pages_redirect_to_login_partials_and_actions_get_401(sqlite_app, admin):
    client = sqlite_app.test_client()
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/admin/login?next=" in response.headers["Location"], url
    for url in PARTIALS:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.json["error"] == "unauthorized"
    token = csrf_from(client.get("/admin/login").text)
    for url in ACTIONS:
        response = client.post(url, headers={"X-CSRFToken": token, "HX-Request": "true"})
        assert response.status_code == 401, url
        assert response.headers["HX-Redirect"] == "/admin/login"


def test_login_logout_session_cookie_flags(sqlite_app, admin):
    client = sqlite_app.test_client()
    response = login(client)
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/admin/failed-operations").status_code == 200
    assert db.session.get(AdminUser, admin.id, populate_existing=True).last_login_at is not None
    db.session.rollback()
    token = csrf_from(client.get("/admin/failed-operations").text)
    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 302, response.text
    assert client.get("/admin/failed-operations").status_code == 302

    secure = sqlite_app.test_client()
    response = login(secure, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_login_rejects_open_redirect_and_wrong_password(sqlite_app, admin):
    client = sqlite_app.test_client()
    token = csrf_from(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"email": "admin@example.com", "password": "nope", "csrf_token": token})
    assert response.status_code == 401 and "Wrong email or password" in response.text
    response = client.post(
        "/admin/login",
        data={"email": "admin@example.com", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"},
    )
    assert response.headers["Location"] == "/admin/operations-health"


def test_login_throttled_after_five_failures_per_email_and_ip(sqlite_app, admin):
    client = sqlite_app.test_client()
    for _ in range(5):
        assert login(client, password="wrong password").status_code in (401, 429)
    locked = login(client)
    assert locked.status_code == 429 and "Too many failed attempts" in locked.text
    # Another address is not locked out by this one's failures.
    other = sqlite_app.test_client()
    assert login(other, environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 302
    # After 15 minutes the lock lifts, and a success clears the count.
    later = utcnow() + timedelta(minutes=16)
    assert admins.log_in("admin@example.com", PASSWORD, "127.0.0.1", now=later).user is not None
    assert db.session.execute(select(FailedLogin)).scalars().all() == []


def test_create_admin_cli_and_duplicates(sqlite_app):
    cli = sqlite_app.test_cli_runner()
    result = cli.invoke(args=["create-admin", "Ops@Example.com", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    assert "created admin ops@example.com" in result.output
    user = db.session.execute(select(AdminUser)).scalar_one()
    assert user.password_hash != PASSWORD and user.password_hash.startswith(("scrypt:", "pbkdf2:"))
    db.session.rollback()
    again = cli.invoke(args=["create-admin", "ops@example.com", "--password", PASSWORD])
    assert again.exit_code != 0 and "already exists" in again.output
    short = cli.invoke(args=["create-admin", "x@example.com", "--password", "short"])
    assert short.exit_code != 0 and "at least" in short.output
    prompted = cli.invoke(args=["create-admin", "y@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output


# --- CSRF ---------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused_even_when_testing(client, sqlite_app):
    assert sqlite_app.config["TESTING"] is True
    operation = make_op()
    response = client.post(f"/admin/operations/{operation.id}/retry", headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert "CSRF token" in response.text
    assert db.session.get(Operation, operation.id, populate_existing=True).state == "dead"
    db.session.rollback()
    bad = client.post(f"/admin/operations/{operation.id}/retry", headers={"X-CSRFToken": "forged"})
    assert bad.status_code == 400
    assert post(client, f"/admin/operations/{operation.id}/retry").status_code == 200


def test_api_and_webhooks_do_not_need_csrf(client, sqlite_app):
    raw = tokens.create_token("ci", "admin").raw
    operation = make_op()
    fresh = sqlite_app.test_client()
    response = fresh.post(f"/api/admin/operations/{operation.id}/retry", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.json["state"] == "pending"
    # Refused for its missing signature, not for CSRF.
    webhook = fresh.post("/webhooks/stripe", data="{}")
    assert webhook.status_code != 400 or "CSRF" not in webhook.text


# --- every console URL needs a login; proxies; a long-open page ------------------------------


def _sample_url(rule) -> str:
    """A URL that matches ``rule`` (1 for integer parts, "csv" for the others)."""
    values = {
        name: (1 if type(rule._converters[name]).__name__ == "IntegerConverter" else "csv") for name in rule.arguments
    }
    return rule.build(values, append_unknown=False)[1]


def test_every_admin_route_in_the_url_map_needs_a_login(sqlite_app, admin):
    client = sqlite_app.test_client()
    token = csrf_from(client.get("/admin/login").text)
    checked = 0
    for rule in sqlite_app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.login":
            continue
        url = _sample_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, headers={"X-CSRFToken": token})
            assert response.status_code in (302, 401), (method, url, response.status_code)
            if response.status_code == 302:
                assert method == "GET" and "/admin/login" in response.headers["Location"], (method, url)
            checked += 1
    # Every page, partial and action in the map (not a hand-kept list): 25 when this was written.
    assert checked >= 25


def test_behind_a_trusted_proxy_https_and_client_address_come_from_its_headers(sqlite_backend):
    app = make_app(sqlite_backend, TRUSTED_PROXY_COUNT=1)
    app.test_client_class = IsolatedClient
    with app.app_context():
        admins.create_admin("admin@example.com", PASSWORD)
        proxied = {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "ops.example.com",
            "X-Forwarded-For": "203.0.113.9",
            "Referer": "https://ops.example.com/admin/login",
        }
        client = app.test_client()
        page = client.get("/admin/login", headers=proxied)
        # Over HTTPS, Flask-WTF also insists on a same-site Referer: the proxied host must be honoured.
        no_referer = {k: v for k, v in proxied.items() if k != "Referer"}
        refused = client.post("/admin/login", headers=no_referer, data={"csrf_token": csrf_from(page.text)})
        assert refused.status_code == 400 and "referrer" in refused.text.lower()
        response = client.post(
            "/admin/login",
            headers=proxied,
            data={"email": "admin@example.com", "password": PASSWORD, "csrf_token": csrf_from(page.text)},
        )
        assert response.status_code == 302, response.text
        cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        # The throttle counts per real client address, not per proxy.
        for _ in range(5):
            admins.log_in("admin@example.com", "wrong", "203.0.113.9")
        assert login(app.test_client(), headers=proxied).status_code == 429
        other = {**proxied, "X-Forwarded-For": "198.51.100.7"}
        assert login(app.test_client(), headers=other).status_code == 302
        db.session.remove()
        db.engine.dispose()


def test_without_trusted_proxies_forwarded_headers_are_ignored(sqlite_app, admin):
    client = sqlite_app.test_client()
    response = login(client, headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 302 and "Secure" not in response.headers["Set-Cookie"]
    assert db.session.execute(select(FailedLogin)).scalars().all() == []
    for _ in range(5):  # failures are counted against the socket's address, whatever the header says
        login(sqlite_app.test_client(), password="wrong", headers={"X-Forwarded-For": "203.0.113.9"})
    db.session.rollback()
    assert {row.ip for row in db.session.execute(select(FailedLogin)).scalars()} == {"127.0.0.1"}
    db.session.rollback()


def test_session_cookie_secure_can_be_forced(sqlite_backend):
    app = make_app(sqlite_backend, SESSION_COOKIE_SECURE=True)
    app.test_client_class = IsolatedClient
    with app.app_context():
        admins.create_admin("admin@example.com", PASSWORD)
        response = login(app.test_client())
        assert response.status_code == 302 and "Secure" in response.headers["Set-Cookie"]
        db.session.remove()
        db.engine.dispose()


def test_a_csrf_token_from_a_page_opened_days_ago_still_works(client, sqlite_app):
    """The token is signed with a timestamp; with WTF_CSRF_TIME_LIMIT=None its age never matters."""
    from flask import session
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    class SignedLongAgo(TimestampSigner):
        def get_timestamp(self):  # what the signer would have written three days ago
            return super().get_timestamp() - 3 * 86400

    operation = make_op()
    with client.session_transaction() as stored:
        raw = stored["csrf_token"]
    old_token = URLSafeTimedSerializer(sqlite_app.secret_key, salt="wtf-csrf-token", signer=SignedLongAgo).dumps(raw)
    # The same signature with a time limit would be refused: the test can tell old from new.
    from flask_wtf.csrf import validate_csrf
    from wtforms import ValidationError

    with sqlite_app.test_request_context():
        session["csrf_token"] = raw
        with pytest.raises(ValidationError, match="expired"):
            validate_csrf(old_token, time_limit=3600)
    response = client.post(
        f"/admin/operations/{operation.id}/retry", headers={"X-CSRFToken": old_token, "HX-Request": "true"}
    )
    assert response.status_code == 200, response.text
    assert 'data-state="pending"' in response.text
