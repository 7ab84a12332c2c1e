"""Fixtures of the console tests: an admin, a logged-in client, requests that do not share ``g``."""

from __future__ import annotations

import pytest

from tests.support.console import PASSWORD, IsolatedClient, csrf_from, login
from webapp.services.console import admins


@pytest.fixture(autouse=True)
def _isolated_clients(request):
    for name in ("sqlite_app", "app"):
        if name in request.fixturenames:
            request.getfixturevalue(name).test_client_class = IsolatedClient


@pytest.fixture
def admin(sqlite_app):
    """An admin user on the SQLite app."""
    return admins.create_admin("admin@example.com", PASSWORD)


@pytest.fixture
def client(sqlite_app, admin):
    """A test client logged in as the admin, with its CSRF token at ``client.csrf``."""
    client = sqlite_app.test_client()
    assert login(client).status_code == 302
    client.csrf = csrf_from(client.get("/admin/failed-operations").text)
    return client
