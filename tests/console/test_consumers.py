"""Consumers: one heartbeat row per process, live / lost / stopped, on the health page and in the admin JSON."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from sqlalchemy import func, select

from webapp.domain.retry import RetryPolicy
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import ConsumerBeat
from webapp.services.access import tokens
from webapp.services.engine import consumers, operations, runner
from webapp.services.engine.registry import handler
from webapp.services.maintenance.cleanup import cleanup

T0 = datetime(2026, 3, 1, 12, 0, 0)
seen_while_running: list = []


@handler("test.consumer_probe", kind="job", policy=RetryPolicy.retries(0))
def consumer_probe(ctx):
    """Records what this process says it is running, from inside a running operation."""
    seen_while_running.append(consumers.running_now())


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _rows() -> int:
    count = db.session.execute(select(func.count()).select_from(ConsumerBeat)).scalar_one()
    db.session.rollback()
    return count


def _beat(identity: str, seconds: float, running: list | None = None, threads: int = 4) -> None:
    consumers.beat(identity, threads=threads, scheduler=False, started_at=T0, now=_at(seconds), running=running or [])


def test_the_runner_knows_what_it_runs_and_each_beat_is_one_upsert(sqlite_app):
    operation = operations.create_operation("test.consumer_probe", {}, idempotency_key="probe-1", now=T0)
    db.session.commit()
    seen_while_running.clear()

    runner.execute(operation.id, now=_at(1), clock=lambda: _at(1))

    [[entry]] = seen_while_running
    identity = consumers.process_identity()
    assert (entry["operation_id"], entry["name"], entry["attempt"]) == (operation.id, "test.consumer_probe", 1)
    assert entry["worker"] == f"{identity}:{threading.current_thread().name}"  # the identity attempts record
    assert consumers.running_now() == []  # forgotten when the attempt ended

    clock = iter([_at(0), _at(5), _at(10), _at(12)])
    beat = consumers.Heartbeat(sqlite_app, threads=3, scheduler=True, interval=3600, clock=lambda: next(clock))
    assert beat.beat_once() and beat.beat_once()
    assert _rows() == 1  # an upsert, not a row per beat
    [live] = consumers.list_consumers(_at(11), sqlite_app.config)
    assert (live.identity, live.threads, live.scheduler, live.status) == (identity, 3, True, "live")
    assert (live.started_at, live.last_seen_at) == (_at(0), _at(10))

    beat.stop()  # a clean stop is "stopped", not "lost"
    [stopped] = consumers.list_consumers(_at(600), sqlite_app.config)
    assert (stopped.status, stopped.stopped_at, stopped.running) == ("stopped", _at(12), [])


def test_live_and_lost_by_the_threshold():
    lost_after = 30.0
    assert consumers.classify(None, _at(0), _at(30), lost_after) == "live"
    assert consumers.classify(None, _at(0), _at(30.5), lost_after) == "lost"
    assert consumers.classify(_at(0), _at(0), _at(1), lost_after) == "stopped"


def test_health_page_and_admin_json_list_consumers_and_healthz_does_not(sqlite_app, client):
    # The page judges against the real clock: one consumer beat just now, the other an hour ago.
    now = utcnow()
    running = [
        {"operation_id": 41, "name": "email.welcome", "attempt": 2, "worker": "web-1:77:Worker-1"},
    ]
    running[0]["started_at"] = now.isoformat()
    consumers.beat("web-1:77", threads=4, scheduler=True, started_at=now, now=now, running=running)
    consumers.beat("old-box:12", threads=2, scheduler=False, started_at=now, now=now - timedelta(hours=1), running=[])

    html = client.get("/admin/partials/health/status").text
    live_row = html.split('data-consumer="web-1:77"')[1].split("</tr>")[0]
    lost_row = html.split('data-consumer="old-box:12"')[1].split("</tr>")[0]
    assert 'data-state="live"' in live_row and 'href="/admin/operations/41"' in live_row
    assert "email.welcome" in live_row and "attempt 2" in live_row
    assert 'data-state="lost"' in lost_row and "idle" in lost_row
    assert html.index('data-consumer="web-1:77"') < html.index('data-consumer="old-box:12"')  # live first
    assert "Recorded here only: no alert channel is configured." in html

    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    assert client.get("/api/admin/consumers").status_code == 401
    report = client.get("/api/admin/consumers", headers=auth).get_json()
    assert report["counts"] == {"live": 1, "lost": 1, "stopped": 0}
    [live, lost] = report["consumers"]
    assert (live["host"], live["pid"], live["status"]) == ("web-1", 77, "live")
    assert live["running"][0]["operation_id"] == 41 and live["last_seen_at"].endswith("Z")
    assert lost["identity"] == "old-box:12" and lost["status"] == "lost"
    liveness = client.get("/api/admin/liveness", headers=auth).get_json()
    assert liveness["consumers"]["counts"]["live"] == 1
    public = client.get("/healthz").text
    assert "consumers" not in public and "web-1" not in public


def test_cleanup_forgets_consumers_not_seen_for_the_retention(sqlite_app):
    _beat("gone:1", 0)
    _beat("recent:2", 23 * 3600)
    report = cleanup(_at(24 * 3600 + 1), sqlite_app.config)  # RETENTION_CONSUMERS_HOURS = 24
    assert report.consumers == 1
    [left] = consumers.list_consumers(_at(24 * 3600 + 1), sqlite_app.config)
    assert left.identity == "recent:2"
