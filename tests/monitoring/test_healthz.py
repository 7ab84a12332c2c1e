"""``GET /healthz``: database and queue reachability, and the reconciler's heartbeat."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

import tasks
from tasks.runtime import run_periodic_jobs
from tests.conftest import inside, make_app
from webapp import create_app
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import PeriodicJob
from webapp.services.access import tokens
from webapp.services.engine import operations
from webapp.services.monitoring import liveness

INTERVAL = 60.0


@pytest.fixture
def health_app(backend):
    """An app whose reconciler runs once a minute, so 'stale' means older than three minutes."""
    app = make_app(backend, RECONCILE_INTERVAL_SECONDS=INTERVAL)
    with inside(app):
        yield app


def get_health(app):
    """/healthz's status with the full report that admins see (``GET /api/admin/liveness``)."""
    response = app.test_client().get("/healthz")
    assert response.is_json, response.data[:200]
    healthy, report = liveness.check(utcnow(), app.config)
    assert response.get_json() == liveness.public_view(report)
    assert response.status_code == (200 if healthy else 503)
    return response.status_code, report


def set_heartbeat_age(seconds: float) -> None:
    db.session.execute(
        update(PeriodicJob)
        .where(PeriodicJob.name == "reconciler")
        .values(last_finished_at=utcnow() - timedelta(seconds=seconds))
    )
    db.session.commit()


def test_fresh_heartbeat_is_healthy_and_reports_queue_depth(health_app, backend):
    run_periodic_jobs(health_app)  # one real reconciler pass writes the heartbeat
    operations.create_operation("test.succeed", {}, idempotency_key="health-depth")
    db.session.commit()  # rings the real queue: one message waits (no worker runs here)

    status, report = get_health(health_app)

    assert status == 200 and report["status"] == "ok"
    assert report["database"] == {"ok": True}
    assert report["queue"]["ok"] is True and report["queue"]["pending"] == 1
    assert report["queue"]["scheduled"] == 0
    assert report["reconciler"]["fresh"] is True
    assert 0 <= report["reconciler"]["heartbeat_age_seconds"] < INTERVAL
    assert report["reconciler"]["stale_after_seconds"] == 3 * INTERVAL


def test_heartbeat_older_than_three_intervals_is_unhealthy(health_app):
    run_periodic_jobs(health_app)

    set_heartbeat_age(3 * INTERVAL - 30)
    assert get_health(health_app)[0] == 200

    set_heartbeat_age(3 * INTERVAL + 30)
    status, report = get_health(health_app)
    assert status == 503 and report["status"] == "unhealthy"
    assert report["reconciler"]["fresh"] is False
    assert report["reconciler"]["heartbeat_age_seconds"] >= 3 * INTERVAL + 30
    assert report["database"] == {"ok": True}


def test_reconciler_that_never_ran_is_unhealthy(health_app):
    status, report = get_health(health_app)

    assert status == 503 and report["status"] == "unhealthy"
    assert report["reconciler"]["heartbeat_age_seconds"] is None
    assert report["reconciler"]["fresh"] is False


def _unmigrated_app(tmp_path, database_url: str, **overrides):
    config = {
        "TESTING": True,
        "BACKSTOP_ENV": "test",
        "SECRET_KEY": "test",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "HUEY_URL": f"sqlite:///{tmp_path / 'huey.db'}",
        "RECONCILE_INTERVAL_SECONDS": INTERVAL,
    }
    config.update(overrides)
    app = create_app(config)
    tasks.bind(app)
    return app


def test_unreachable_database_is_503_json_not_500(tmp_path):
    # Nothing listens on port 1: the connection is refused at once.
    app = _unmigrated_app(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:1/backstop")
    with app.app_context():
        status, report = get_health(app)
        db.engine.dispose()

    assert status == 503 and report["status"] == "unhealthy"
    assert report["database"]["ok"] is False and report["database"]["error"] == "OperationalError"
    # The queue is still checked and reported.
    assert report["queue"]["ok"] is True
    # No connection string, password or driver message leaks into the report.
    assert "127.0.0.1" not in str(report) and "postgres" not in str(report)


def test_database_without_schema_is_503_json_not_500(tmp_path):
    app = _unmigrated_app(tmp_path, f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with app.app_context():
        status, report = get_health(app)
        db.engine.dispose()

    assert status == 503 and report["status"] == "unhealthy"
    assert report["database"]["ok"] is True
    assert report["reconciler"]["fresh"] is False and "error" in report["reconciler"]


def test_unreachable_queue_is_reported(tmp_path, sqlite_backend):
    app = make_app(sqlite_backend, RECONCILE_INTERVAL_SECONDS=INTERVAL, HUEY_URL="redis://127.0.0.1:1/0")
    with app.app_context():
        run_periodic_jobs(app)
        status, report = get_health(app)
        db.session.remove()
        db.engine.dispose()

    assert report["queue"]["ok"] is False and report["queue"]["error"] == "ConnectionError"
    # The queue is only a doorbell: with the database and reconciler fine, the service is up.
    assert status == 200 and report["reconciler"]["fresh"] is True


def test_public_healthz_shows_status_and_freshness_only_admins_see_details(health_app):
    secret = "UPDATE customers SET ... parameters: ('grace@example.com',)"
    run_periodic_jobs(health_app)
    db.session.execute(update(PeriodicJob).values(last_error=secret))
    db.session.commit()
    client = health_app.test_client()

    public = client.get("/healthz")
    assert public.status_code == 200
    assert "grace@example.com" not in public.text and "last_error" not in public.text
    report = public.get_json()
    assert report["status"] == "ok" and report["database"] == {"ok": True} and report["queue"] == {"ok": True}
    assert report["reconciler"] == {"fresh": True}
    assert all(set(job) == {"fresh"} for job in report["jobs"].values()), report["jobs"]

    assert client.get("/api/admin/liveness").status_code == 401
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    details = client.get("/api/admin/liveness", headers=auth)
    assert details.status_code == 200
    assert details.json["healthy"] is True and details.json["status"] == "ok"
    assert details.json["jobs"]["reconciler"]["last_error"] == secret
    assert details.json["reconciler"]["heartbeat_age_seconds"] is not None
