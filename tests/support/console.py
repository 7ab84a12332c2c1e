"""The console tests' helpers: direct operation rows, logging in through the form, htmx-style posts."""

from __future__ import annotations

import re
from datetime import timedelta

from flask import g
from flask.testing import FlaskClient

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.failures import get_operations

PASSWORD = "correct horse battery"
PAGES = [
    "/admin/failed-operations",
    "/admin/operations-health",
    "/admin/issues",
    "/admin/operations",
    "/admin/operations/1",
    "/admin/failed-operations/export.csv",
    "/admin/failed-operations/export.json",
    "/admin/audit",
]
PARTIALS = [
    "/admin/partials/stats",
    "/admin/partials/operations",
    "/admin/partials/health/cards",
    "/admin/partials/health/status",
    "/admin/partials/health/breakdown",
    "/admin/partials/health/trend",
    "/admin/partials/operations/1/row",
    "/admin/partials/operations/1/details",
    "/admin/partials/bulk-jobs/1",
    "/admin/partials/audit",
]
ACTIONS = [
    "/admin/operations/1/retry",
    "/admin/operations/1/resolve",
    "/admin/operations/1/cancel",
    "/admin/operations/1/run-now",
    "/admin/operations/1/reschedule",
    "/admin/operations/bulk",
    "/admin/bulk-jobs",
    "/admin/bulk-jobs/1/start",
    "/admin/bulk-jobs/1/cancel",
    "/admin/issues/abc/retry",
    "/admin/issues/abc/resolve",
    "/admin/logout",
]

_sequence = iter(range(1, 10**9))


def make_op(
    state="dead",
    kind="email",
    name="email.welcome",
    *,
    error="SMTP timeout after 30s",
    dead_ago=timedelta(hours=1),
    **fields,
) -> Operation:
    """Insert one operation row directly (no handler, no doorbell) and commit."""
    now = utcnow()
    n = next(_sequence)
    values = dict(
        kind=kind,
        name=name,
        payload={"to": f"user{n}@example.com"},
        idempotency_key=f"k-{n}",
        subject=f"subject-{n}",
        state=state,
        attempts=1,
        max_attempts=4,
        next_attempt_at=now,
        created_at=now - dead_ago - timedelta(seconds=5),
        updated_at=now,
    )
    if state == "dead":
        values.update(
            dead_at=now - dead_ago,
            error_class="TransientError",
            error_message=error,
            error_kind="transient",
            error_stack="Traceback...\nTransientError: " + (error or ""),
        )
    if state == "succeeded":
        values.update(succeeded_at=now - dead_ago)
    values.update(fields)
    operation = Operation(**values)
    db.session.add(operation)
    db.session.commit()
    return operation


class IsolatedClient(FlaskClient):
    """A test client whose requests do not share ``g`` (the fixtures keep one app context open).

    In production each request gets its own app context; here the test's context is reused,
    and Flask-Login and Flask-WTF cache the user and the CSRF token on ``g``.
    """

    def open(self, *args, **kwargs):
        """Forget the previous request's ``g`` first."""
        for name in list(vars(g)):
            delattr(g, name)
        return super().open(*args, **kwargs)


def csrf_from(html: str) -> str:
    """The CSRF token from a page's meta tag."""
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def login(client, email="admin@example.com", password=PASSWORD, **kwargs):
    """Log in through the form (with its CSRF token); returns the response."""
    token = csrf_from(client.get("/admin/login", **kwargs).text)
    return client.post("/admin/login", data={"email": email, "password": password, "csrf_token": token}, **kwargs)


def post(client, url, data=None, **kwargs):
    """An htmx-style POST carrying the CSRF header."""
    return client.post(url, data=data or {}, headers={"X-CSRFToken": client.csrf, "HX-Request": "true"}, **kwargs)


def listed_ids(html: str) -> list[int]:
    """The operation ids of the rows a list page shows, in order."""
    return [int(value) for value in re.findall(r'<tbody id="op-(\d+)"', html)]


def resolved_notes(*ids: int) -> dict:
    """Each operation's resolution note, or False while it is unresolved (read fresh)."""
    found = {op.id: op.resolved_at is not None and op.resolution_note for op in get_operations(list(ids))}
    return {operation_id: found[operation_id] for operation_id in ids}
