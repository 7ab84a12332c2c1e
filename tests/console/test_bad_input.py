"""Bad input to the console is a precise 4xx, never a 500."""

from __future__ import annotations

from tests.support.console import PASSWORD, csrf_from, login
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
]
BAD_ACTIONS = [
    f"/admin/operations/{HUGE}/retry",
    f"/admin/operations/{HUGE}/resolve",
    f"/admin/bulk-jobs/{HUGE}/start",
    "/admin/bulk-jobs/424242/start",
    "/admin/bulk-jobs/424242/cancel",
    "/admin/issues/zz/retry",
    "/admin/issues/zz/resolve",
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
