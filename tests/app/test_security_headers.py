"""Security headers on every response, whatever answers it; a size limit on every request."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

from flask import Response

from tests.conftest import inside, make_app
from tests.support.http_server import serve
from webapp.headers import SECURITY_HEADERS, add_security_headers


def test_every_kind_of_response_carries_the_security_headers(sqlite_app):
    client = sqlite_app.test_client()
    responses = {
        "login page": client.get("/admin/login"),
        "redirect to login": client.get("/admin/failed-operations"),
        "static file": client.get("/static/js/admin.js"),
        "healthz": client.get("/healthz"),
        "storefront api 401": client.get("/api/purchases/1"),
        "admin api 401": client.get("/api/admin/operations"),
        "webhook refusal": client.post("/webhooks/stripe", data=b"{}"),
        "not found": client.get("/no/such/page"),
    }
    for what, response in responses.items():
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (what, name)
    policy = dict(
        part.strip().split(" ", 1) for part in SECURITY_HEADERS["Content-Security-Policy"].split(";") if part.strip()
    )
    assert policy["script-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in SECURITY_HEADERS["Content-Security-Policy"]
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"


def test_a_header_the_response_already_carries_is_kept_whatever_its_case():
    own = Response("framed", headers={"x-frame-options": "SAMEORIGIN", "Content-Security-Policy": "default-src *"})

    headers = add_security_headers(own).headers

    assert headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers.getlist("Content-Security-Policy") == ["default-src *"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "same-origin"


# --- request size limits ---------------------------------------------------------------------


def _announce_and_wait(base: str, path: str, announced: int, headers: dict | None = None) -> tuple[int, float]:
    """Announce a body of ``announced`` bytes, send only a few, and return the status and how long it took."""
    url = urlparse(base)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.hostname}:{url.port}",
        "Content-Type: multipart/form-data; boundary=x",
        f"Content-Length: {announced}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=5) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n--x\r\n").encode())
        status_line = conn.makefile("rb").readline().decode()
    return int(status_line.split()[1]), time.monotonic() - started


def test_an_oversized_body_is_refused_with_413_before_it_is_read(sqlite_app):
    hundred_mb = 100 * 1024 * 1024
    with serve(sqlite_app) as base:
        for path, headers in [
            ("/admin/login", None),
            ("/admin/operations/bulk", None),
            ("/api/admin/operations/1/resolve", {"Authorization": "Bearer nope"}),
            ("/healthz", None),
        ]:
            # The server answers at once: it never waits for the 100 MB it was promised.
            status, seconds = _announce_and_wait(base, path, hundred_mb, headers)
            assert status == 413, path
            assert seconds < 3, (path, seconds)


def test_the_limit_is_a_setting_and_bodies_within_it_still_work(sqlite_backend):
    app = make_app(sqlite_backend, REQUEST_MAX_BYTES=2000)
    with inside(app):
        client = app.test_client()
        small = client.post("/admin/login", data={"email": "a@example.com", "password": "x" * 100})
        assert small.status_code == 400  # read, and refused for its missing CSRF token
        big = client.post("/admin/login", data={"email": "a@example.com", "password": "x" * 3000})
        assert big.status_code == 413 and big.headers["Connection"] == "close"
        api = client.post("/api/admin/operations/1/resolve", data="x" * 3000, headers={"Authorization": "Bearer nope"})
        assert api.status_code == 413 and api.get_json()["error"] == "too_large"
        # The storefront API and the webhook keep their own (larger) limits.
        purchase = client.post("/api/purchases", data="x" * 3000, content_type="application/json")
        assert purchase.status_code == 401
        assert client.post("/webhooks/stripe", data="x" * 3000).status_code != 413
