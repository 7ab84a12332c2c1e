"""Bad input to the console is a precise 4xx, never a 500."""

from __future__ import annotations

import pytest

from tests.support.console import PASSWORD, IsolatedClient, csrf_from, login, make_op
from tests.support.reads import detached
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.access import tokens
from webapp.services.console import admins

# --- bad input is a precise 4xx, never a 500 --------------------------------------------------

HUGE = "9" * 25
BAD_PAGE_URLS = [
    f"/admin/partials/operations/{HUGE}/details",
    f"/admin/partials/operations/{HUGE}/row",
    f"/admin/partials/bulk-jobs/{HUGE}",
    "/admin/failed-operations?q=a%00b",
    "/admin/failed-operations?name=a%00b",
    "/admin/failed-operations?since=9999-12-31T23:59:59-14:00",
    "/admin/failed-operations?until=0001-01-01T00:00+14:00",
    "/admin/failed-operations?cursor=_5",
    "/admin/failed-operations?cursor=2026-01-01T00:00:00_" + HUGE,
    "/admin/issues?q=%00",
    "/admin/failed-operations/export.csv?q=%00",
    "/admin/operations-health?window=%00",
    "/admin/audit?actor=%00",
    "/admin/audit?since=9999-12-31T23:59:59-14:00",
    "/admin/partials/audit?cursor=2026-01-01T00:00:00_" + HUGE,
]
BAD_ACTIONS = [
    f"/admin/operations/{HUGE}/retry",
    f"/admin/operations/{HUGE}/resolve",
    f"/admin/bulk-jobs/{HUGE}/start",
    "/admin/bulk-jobs/424242/start",
    "/admin/bulk-jobs/424242/cancel",
    "/admin/issues/zz/retry",
    "/admin/issues/zz/resolve",
    f"/admin/operations/{HUGE}/run-now",
    f"/admin/operations/{HUGE}/reschedule",
    "/admin/operations/424242/reschedule",
    "/admin/operations/424242/run-now",
]
BAD_API = [
    ("GET", f"/api/admin/operations/{HUGE}"),
    ("POST", f"/api/admin/operations/{HUGE}/retry"),
    ("GET", "/api/admin/operations?limit=%C2%B2"),
    ("GET", "/api/admin/operations?limit=99999999999999999999"),
    ("GET", "/api/admin/operations?q=%00"),
    ("GET", "/api/admin/dead-letter-queue?since=9999-12-31T23:59:59-14:00"),
    ("GET", f"/api/admin/bulk-jobs/{HUGE}"),
    ("POST", "/api/admin/bulk-jobs/424242/cancel"),
    ("GET", "/api/admin/recent-failures?limit=x"),
    ("GET", "/api/admin/health?window=%00"),
    ("GET", "/api/admin/audit-log?actor=%00"),
    ("GET", "/api/admin/audit-log?since=9999-12-31T23:59:59-14:00"),
    ("GET", "/api/admin/audit-log?cursor=2026-01-01T00:00:00_" + HUGE),
    ("POST", f"/api/admin/operations/{HUGE}/run-now"),
    ("POST", "/api/admin/operations/424242/run-now"),
    ("POST", "/api/admin/operations/bulk-run-now"),
]


def test_bad_input_answers_4xx_never_500(app):
    admins.create_admin("admin@example.com", PASSWORD)
    client = app.test_client()
    login(client)
    csrf = csrf_from(client.get("/admin/failed-operations").text)
    for url in BAD_PAGE_URLS:
        response = client.get(url)
        assert 400 <= response.status_code < 500, (url, response.status_code)
    for url in BAD_ACTIONS:
        response = client.post(url, headers={"X-CSRFToken": csrf, "HX-Request": "true"}, data={"status": "unresolved"})
        assert 400 <= response.status_code < 500, (url, response.status_code)
    assert client.post("/admin/bulk-jobs/424242/start", headers={"X-CSRFToken": csrf}).status_code == 404
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    for method, url in BAD_API:
        response = client.open(url, method=method, headers=auth)
        assert 400 <= response.status_code < 500, (method, url, response.status_code)
        assert set(response.json) == {"error", "message"}, url
    response = client.post("/api/admin/operations/bulk-retry", headers=auth, json={"filters": {"q": "\x00"}})
    assert response.status_code == 400 and response.json["error"] == "invalid_filter"


# --- text no database can store, absurd nesting, ids beyond BIGINT (issue 13, rows 2-4) ---------

LONE_SURROGATE_BODIES = [
    ("/api/admin/operations/{id}/resolve", '{"note": "fixed \\ud800"}', "note"),
    ("/api/admin/operations/bulk-retry", '{"filters": {"q": "\\ud800"}}', "filters.q"),
    ("/api/admin/operations/bulk-retry", '{"filters": {"name": "email.\\udfff"}}', "filters.name"),
    ("/api/admin/pauses/email.welcome/pause", '{"note": "\\ud800 maintenance"}', "note"),
    ("/api/admin/pauses/email.welcome/pause", '{"\\ud800": 1}', "\\ud800"),
]


def test_lone_surrogates_in_admin_api_bodies_are_400_naming_the_field(app):
    dead = make_op()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}", "Content-Type": "application/json"}
    client = app.test_client()
    for url, body, field in LONE_SURROGATE_BODIES:
        response = client.post(url.format(id=dead.id), data=body, headers=auth)
        db.session.rollback()
        assert response.status_code == 400, (url, body, response.status_code)
        assert response.json["error"] == "invalid_json"
        assert response.json["field"] == field and field in response.json["message"]
    assert detached(lambda: db.session.get(Operation, dead.id)).resolved_at is None
    assert client.get("/api/admin/pauses", headers=auth).json["pauses"][0]["paused"] is False


def test_nul_in_an_admin_note_is_400_on_every_backend(app):
    dead = make_op()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    client = app.test_client()
    for url in (f"/api/admin/operations/{dead.id}/resolve", "/api/admin/pauses/email.welcome/pause"):
        response = client.post(url, json={"note": "a\x00b"}, headers=auth)
        assert (response.status_code, response.json["error"]) == (400, "invalid_note"), url
        assert "NUL" in response.json["message"]
    assert detached(lambda: db.session.get(Operation, dead.id)).resolved_at is None


def test_a_2kb_body_of_nested_arrays_is_400_invalid_json_on_every_admin_api_route(app):
    dead = make_op()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}", "Content-Type": "application/json"}
    client = app.test_client()
    nested = "[" * 1000 + "]" * 1000
    for url in (
        f"/api/admin/operations/{dead.id}/resolve",
        "/api/admin/operations/bulk-retry",
        "/api/admin/pauses/email.welcome/pause",
    ):
        response = client.post(url, data=nested, headers=auth)
        assert (response.status_code, response.json["error"]) == (400, "invalid_json"), url


OUT_OF_RANGE_IDS = [str(2**63), str(10**20), str(-(2**63) - 1), "-1", "0", "\uff11", "1_0", " ", "1e3"]


@pytest.mark.parametrize("action", ["retry", "resolve"])
def test_bulk_ids_beyond_bigint_are_400_naming_the_id(app, action):
    admins.create_admin("admin@example.com", PASSWORD)
    app.test_client_class = IsolatedClient
    client = app.test_client()
    login(client)
    csrf = csrf_from(client.get("/admin/failed-operations").text)
    dead = make_op()
    for bad in OUT_OF_RANGE_IDS:
        response = client.post(
            "/admin/operations/bulk",
            data={"action": action, "ids": [str(dead.id), bad]},
            headers={"X-CSRFToken": csrf, "HX-Request": "true"},
        )
        assert response.status_code == 400, (bad, response.status_code)
        assert "is not an operation id" in response.text
        if bad.strip() and bad.isascii():
            assert f"operation id &#39;{bad}&#39;" in response.text
    assert detached(lambda: db.session.get(Operation, dead.id)).resolved_at is None
    assert detached(lambda: db.session.get(Operation, dead.id)).state == "dead"


def test_nul_in_console_forms_and_pause_names_is_400_on_every_backend(app):
    admins.create_admin("admin@example.com", PASSWORD)
    app.test_client_class = IsolatedClient
    client = app.test_client()
    login(client)
    headers = {"X-CSRFToken": csrf_from(client.get("/admin/failed-operations").text), "HX-Request": "true"}
    dead = make_op()
    for url, data in (
        (f"/admin/operations/{dead.id}/resolve", {"note": "done\x00"}),
        ("/admin/operations/bulk", {"action": "resolve", "ids": [str(dead.id)], "note": "\x00"}),
        ("/admin/pauses/email.welcome%00/pause", {}),
        ("/admin/pauses/a%00b/resume", {}),
    ):
        response = client.post(url, data=data, headers=headers)
        assert response.status_code == 400, (url, response.status_code)
        assert "NUL" in response.text
    assert detached(lambda: db.session.get(Operation, dead.id)).resolved_at is None
