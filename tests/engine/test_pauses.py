"""Pause and resume: while paused nothing runs and nothing is lost; resume drains oldest first."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.monitoring import create
from tests.support.polling import calls, wait_for, wait_state
from tests.support.reads import load
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.access import tokens
from webapp.services.engine import pauses, reconciler, runner
from webapp.services.engine.operations import NoteTooLong


def drain_queue(huey) -> list[int]:
    """Run every message waiting in Huey in this process (a one-thread consumer); return the ids rung."""
    rung = []
    while (task := huey.dequeue()) is not None:
        rung.append(task.args[0])
        huey.execute(task)
    return rung


def test_paused_operations_wait_and_resume_runs_them_in_creation_order(sqlite_app, tmp_path):
    huey = sqlite_app.extensions["backstop.huey"]
    log = tmp_path / "calls.log"
    pauses.pause("test.succeed", "ops@example.com", "provider down")
    ids = [create("test.succeed", f"held-{i}", utcnow() + timedelta(microseconds=i), log=str(log)) for i in range(5)]

    # Every delivery of the paused operations is refused, and the reconciler does not re-ring them.
    assert drain_queue(huey) == ids
    assert calls(log) == [] and {load(i).state for i in ids} == {"pending"}
    assert runner.execute(ids[0]).outcome == "not_claimed"
    assert reconciler.ring_overdue(utcnow() + timedelta(minutes=5), 100, 1.0) == 0
    [item] = [p for p in pauses.list_pauses() if p["name"] == "test.succeed"]
    assert item["paused"] and item["paused_by"] == "ops@example.com" and item["waiting"] == 5

    assert pauses.resume("test.succeed", "ops@example.com") == 5

    assert drain_queue(huey) == ids  # rung oldest first
    assert [line.split()[0] for line in calls(log)] == [str(i) for i in ids]
    assert {load(i).state for i in ids} == {"succeeded"}
    assert pauses.resume("test.succeed", "ops@example.com") == 0  # not paused: nothing to do


def test_pause_refuses_unknown_names_and_needs_an_actor(sqlite_app):
    for name, by in (("no.such.handler", "ops"), ("test.succeed", " "), ("", "ops")):
        try:
            pauses.pause(name, by)
        except pauses.PauseError:
            continue
        raise AssertionError(f"pause({name!r}, {by!r}) was accepted")
    assert not pauses.is_paused("test.succeed")


def test_pause_then_resume_with_a_real_worker_loses_nothing(app, backend, start_worker, tmp_path):
    huey = app.extensions["backstop.huey"]
    log = tmp_path / "calls.log"
    pauses.pause("test.succeed", "ops@example.com")
    ids = [create("test.succeed", f"held-{i}", log=str(log)) for i in range(8)]
    start_worker(backend)
    # The worker has taken every ring and refused every one; the operations still wait.
    wait_for(lambda: huey.pending_count() == 0, message="the worker to consume the rings")
    wait_for(lambda: all(load(i).state == "pending" for i in ids), message="paused operations to wait")
    assert calls(log) == []

    pauses.resume("test.succeed", "ops@example.com")

    for operation_id in ids:
        assert wait_state(operation_id, {"succeeded", "dead"}).state == "succeeded"
    assert sorted(int(line.split()[0]) for line in calls(log)) == ids  # each exactly once


def test_admin_api_pauses_and_resumes(sqlite_app):
    client = sqlite_app.test_client()
    token = tokens.create_token("ops-bot", "admin").raw
    headers = {"Authorization": f"Bearer {token}"}

    assert client.post("/api/admin/pauses/test.succeed/pause").status_code == 401
    assert client.post("/api/admin/pauses/no.such/pause", headers=headers).status_code == 404
    response = client.post("/api/admin/pauses/test.succeed/pause", headers=headers, json={"note": "provider down"})
    assert response.status_code == 200
    assert response.json["pause"]["paused"] and response.json["pause"]["paused_by"] == "token:ops-bot"
    assert response.json["pause"]["note"] == "provider down"
    operation_id = create("test.succeed", "api-held")
    listed = {item["name"]: item for item in client.get("/api/admin/pauses", headers=headers).json["pauses"]}
    assert listed["test.succeed"]["paused"] and listed["test.succeed"]["waiting"] == 1
    assert not listed["test.flaky"]["paused"]

    response = client.post("/api/admin/pauses/test.succeed/resume", headers=headers)

    assert response.status_code == 200 and response.json["rung"] == 1 and not response.json["pause"]["paused"]
    assert db.session.execute(select(Operation.state).where(Operation.id == operation_id)).scalar() == "pending"
    db.session.rollback()


def test_an_over_long_pause_note_is_refused_not_cut(sqlite_app):
    client = sqlite_app.test_client()
    headers = {"Authorization": f"Bearer {tokens.create_token('ops-bot', 'admin').raw}"}
    with pytest.raises(NoteTooLong):
        pauses.pause("test.succeed", "ops@example.com", "x" * 2001)

    refused = client.post("/api/admin/pauses/test.succeed/pause", headers=headers, json={"note": "x" * 2001})

    assert refused.status_code == 400 and refused.json["error"] == "invalid_note"
    assert not pauses.is_paused("test.succeed")
    accepted = client.post("/api/admin/pauses/test.succeed/pause", headers=headers, json={"note": "y" * 2000})
    assert accepted.status_code == 200 and accepted.json["pause"]["note"] == "y" * 2000


def test_health_page_shows_pauses_and_its_buttons_pause_and_resume(sqlite_app, tmp_path):
    from tests.support.console import PASSWORD, IsolatedClient, csrf_from, login
    from webapp.services.console import admins

    sqlite_app.test_client_class = IsolatedClient  # one app context is shared: forget g per request
    log = tmp_path / "calls.log"
    admins.create_admin("admin@example.com", PASSWORD)
    client = sqlite_app.test_client()
    assert login(client).status_code == 302
    headers = {"X-CSRFToken": csrf_from(client.get("/admin/operations-health").text), "HX-Request": "true"}

    assert client.post("/admin/pauses/test.succeed/pause", headers=headers).status_code == 400  # no reason
    response = client.post("/admin/pauses/test.succeed/pause", headers=headers, data={"note": "deploying"})

    assert response.status_code == 200
    assert pauses.is_paused("test.succeed")
    row = re.search(r'<li data-pause="test\.succeed">.*?</li>', response.text, re.S).group(0)
    assert 'data-state="paused"' in row and "by admin@example.com" in row and "deploying" in row and ">Resume<" in row
    operation_id = create("test.succeed", "page-held", log=str(log))
    huey = sqlite_app.extensions["backstop.huey"]
    assert drain_queue(huey) == [operation_id] and calls(log) == []  # rung, refused: it waits
    panel = client.get("/admin/partials/health/status", headers={"HX-Request": "true"}).text
    assert "1 waiting" in re.search(r'<li data-pause="test\.succeed">.*?</li>', panel, re.S).group(0)
    assert client.post("/admin/pauses/no.such.handler/pause", headers=headers).status_code == 400
    assert client.post("/admin/pauses/test.succeed/pause", headers={"HX-Request": "true"}).status_code in (400, 403)

    response = client.post("/admin/pauses/test.succeed/resume", headers=headers)

    assert response.status_code == 200 and not pauses.is_paused("test.succeed")
    assert ">Pause test.succeed<" in re.search(r'<li data-pause="test\.succeed">.*?</li>', response.text, re.S).group(0)
    assert drain_queue(huey) == [operation_id] and load(operation_id).state == "succeeded"
