"""The audit log (every admin action: who, when, what, target, note, address) and the actions on waiting work:
run now, reschedule, retry with N attempts, their bulk forms, and run_at / next_attempt_at in the JSON."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from tests.support.console import make_op, post
from tests.support.polling import wait_for
from tests.support.postgres import postgres_app
from webapp.domain.time import iso, utcnow
from webapp.extensions import db
from webapp.models import AuditEntry, Operation
from webapp.services.access import tokens
from webapp.services.console import audit, bulk
from webapp.services.console.failures import get_operations
from webapp.services.engine import operations, runner
from webapp.services.maintenance.cleanup import cleanup

ADDRESS = "203.0.113.7"
ENVIRON = {"REMOTE_ADDR": ADDRESS}


def _later(**delta):
    return utcnow() + timedelta(**(delta or {"days": 1}))


def _scheduled():
    later = _later()
    return make_op(state="scheduled", run_at=later, next_attempt_at=later, error_message=None)


def _retrying():
    return make_op(state="retrying", attempts=2, next_attempt_at=_later(minutes=10), error_message="timeout")


def _api(sqlite_app, name="ops"):
    client = sqlite_app.test_client()
    client.auth = {"Authorization": f"Bearer {tokens.create_token(name, 'admin').raw}"}
    return client


def _entries(**where) -> list[AuditEntry]:
    rows = db.session.execute(select(AuditEntry).filter_by(**where).order_by(AuditEntry.id)).scalars().all()
    db.session.rollback()
    return list(rows)


def _htmx(client, url, data=None):
    return post(client, url, data, environ_base=ENVIRON)


# --- every action leaves one row -----------------------------------------------------------


def _console_retry(client, sqlite_app):
    op = make_op()
    assert _htmx(client, f"/admin/operations/{op.id}/retry", {"attempts": "3"}).status_code == 200
    return "operation.retry", "admin@example.com", ("operation", str(op.id)), {"attempts": 3}


def _console_resolve(client, sqlite_app):
    op = make_op()
    assert _htmx(client, f"/admin/operations/{op.id}/resolve", {"note": "refunded"}).status_code == 200
    return "operation.resolve", "admin@example.com", ("operation", str(op.id)), None


def _api_cancel(client, sqlite_app):
    op = _scheduled()
    api = _api(sqlite_app)
    assert api.post(f"/api/admin/operations/{op.id}/cancel", headers=api.auth, environ_base=ENVIRON).status_code == 200
    return "operation.cancel", "token:ops", ("operation", str(op.id)), None


def _console_run_now(client, sqlite_app):
    op = _scheduled()
    assert _htmx(client, f"/admin/operations/{op.id}/run-now").status_code == 200
    return "operation.run_now", "admin@example.com", ("operation", str(op.id)), None


def _api_reschedule(client, sqlite_app):
    op = _retrying()
    api = _api(sqlite_app)
    run_at = _later(hours=3).replace(microsecond=0)
    response = api.post(
        f"/api/admin/operations/{op.id}/reschedule",
        json={"run_at": iso(run_at)},
        headers=api.auth,
        environ_base=ENVIRON,
    )
    assert response.status_code == 200, response.json
    return "operation.reschedule", "token:ops", ("operation", str(op.id)), {"run_at": iso(run_at)}


def _console_pause(client, sqlite_app):
    assert _htmx(client, "/admin/pauses/email.welcome/pause", {"note": "provider down"}).status_code == 200
    return "pause", "admin@example.com", ("operation_name", "email.welcome"), None


def _api_resume(client, sqlite_app):
    api = _api(sqlite_app)
    assert api.post("/api/admin/pauses/email.welcome/pause", json={"note": "x"}, headers=api.auth).status_code == 200
    assert api.post("/api/admin/pauses/email.welcome/resume", headers=api.auth, environ_base=ENVIRON).status_code == 200
    return "resume", "token:ops", ("operation_name", "email.welcome"), None


def _bulk_start(client, sqlite_app):
    make_op(kind="webhook")
    preview = _htmx(client, "/admin/bulk-jobs", {"kind": "webhook", "status": "unresolved"})
    job_id = re.search(r"bulk-job-(\d+)", preview.text).group(1)
    assert _htmx(client, f"/admin/bulk-jobs/{job_id}/start").status_code == 200
    return "bulk_job.start", "admin@example.com", ("bulk_job", job_id), {"action": "retry", "total": 1}


def _bulk_cancel(client, sqlite_app):
    make_op(kind="webhook")
    preview = _htmx(client, "/admin/bulk-jobs", {"kind": "webhook", "status": "unresolved"})
    job_id = re.search(r"bulk-job-(\d+)", preview.text).group(1)
    assert _htmx(client, f"/admin/bulk-jobs/{job_id}/cancel").status_code == 200
    return "bulk_job.cancel", "admin@example.com", ("bulk_job", job_id), {"action": "retry"}


def _login(client, sqlite_app):
    fresh = sqlite_app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', fresh.get("/admin/login").text).group(1)
    form = {"email": "admin@example.com", "password": "correct horse battery", "csrf_token": token}
    assert fresh.post("/admin/login", data=form, environ_base=ENVIRON).status_code == 302
    return "login", "admin@example.com", ("admin", None), None


def _failed_login(client, sqlite_app):
    fresh = sqlite_app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', fresh.get("/admin/login").text).group(1)
    form = {"email": "Mallory@Example.com", "password": "guess", "csrf_token": token}
    assert fresh.post("/admin/login", data=form, environ_base=ENVIRON).status_code == 401
    return "login.failed", "mallory@example.com", (None, None), None


def _logout(client, sqlite_app):
    response = client.post("/admin/logout", data={"csrf_token": client.csrf}, environ_base=ENVIRON)
    assert response.status_code == 302
    return "logout", "admin@example.com", ("admin", None), None


def _cli_create_admin(client, sqlite_app):
    result = sqlite_app.test_cli_runner().invoke(args=["create-admin", "second@example.com", "--password", "x" * 12])
    assert result.exit_code == 0, result.output
    return "admin.create", "cli:", ("admin", None), {"email": "second@example.com"}


def _cli_token_create(client, sqlite_app):
    result = sqlite_app.test_cli_runner().invoke(args=["tokens", "create", "--scope", "admin", "--name", "deploy"])
    assert result.exit_code == 0, result.output
    token_id = re.search(r"token (\d+) ", result.output).group(1)
    assert result.output.splitlines()[-1] not in str(_entries(action="token.create")[0].details)  # never the secret
    return "token.create", "cli:", ("api_token", token_id), {"name": "deploy", "scope": "admin"}


def _cli_token_revoke(client, sqlite_app):
    token_id = tokens.create_token("old", "admin").token.id
    result = sqlite_app.test_cli_runner().invoke(args=["tokens", "revoke", str(token_id)])
    assert result.exit_code == 0, result.output
    return "token.revoke", "cli:", ("api_token", str(token_id)), None


ACTIONS = [
    _console_retry,
    _console_resolve,
    _api_cancel,
    _console_run_now,
    _api_reschedule,
    _console_pause,
    _api_resume,
    _bulk_start,
    _bulk_cancel,
    _login,
    _failed_login,
    _logout,
    _cli_create_admin,
    _cli_token_create,
    _cli_token_revoke,
]


@pytest.mark.parametrize("act", ACTIONS, ids=[act.__name__.strip("_") for act in ACTIONS])
def test_every_admin_action_leaves_one_audit_row(client, sqlite_app, act):
    before = {entry.id for entry in _entries()}
    action, actor, (target_type, target_id), details = act(client, sqlite_app)
    new = [entry for entry in _entries(action=action) if entry.id not in before]
    assert len(new) == 1, [(e.action, e.actor) for e in _entries() if e.id not in before]
    entry = new[0]
    assert entry.actor.startswith(actor) if actor.endswith(":") else entry.actor == actor
    assert entry.target_type == target_type
    assert target_id is None or entry.target_id == target_id
    assert (utcnow() - entry.created_at) < timedelta(minutes=1)
    assert entry.address == (None if actor.startswith("cli:") else ADDRESS)
    assert details is None or details.items() <= (entry.details or {}).items()


def test_a_refused_action_records_nothing_and_a_resolve_note_is_kept(client):
    op = make_op(state="succeeded")
    assert _htmx(client, f"/admin/operations/{op.id}/retry").status_code == 409
    assert _htmx(client, f"/admin/operations/{op.id}/run-now").status_code == 409
    assert [e.action for e in _entries()] == ["admin.create", "login"]  # the fixture's; nothing for the refusals
    dead = make_op()
    _htmx(client, f"/admin/operations/{dead.id}/resolve", {"note": "customer refunded"})
    assert _entries(action="operation.resolve")[0].note == "customer refunded"


def test_resolving_after_a_retry_keeps_both_in_the_trail(client, sqlite_app):
    op = make_op()
    assert _htmx(client, f"/admin/operations/{op.id}/retry").status_code == 200
    # The retry fails for good; someone else resolves it with a note that replaces "retried by ...".
    db.session.execute(Operation.__table__.update().where(Operation.id == op.id).values(state="dead", dead_at=utcnow()))
    db.session.commit()
    api = _api(sqlite_app, "oncall")
    assert (
        api.post(f"/api/admin/operations/{op.id}/resolve", json={"note": "gave up"}, headers=api.auth).status_code
        == 200
    )
    assert get_operations([op.id])[0].resolution_note == "gave up"
    trail = audit.entries_for("operation", str(op.id))
    assert [(e.action, e.actor) for e in trail] == [
        ("operation.retry", "admin@example.com"),
        ("operation.resolve", "token:oncall"),
    ]
    shown = api.get(f"/api/admin/operations/{op.id}", headers=api.auth).json["admin_actions"]
    assert [(e["action"], e["actor"], e["note"]) for e in shown] == [
        ("operation.retry", "admin@example.com", None),
        ("operation.resolve", "token:oncall", "gave up"),
    ]
    details = client.get(f"/admin/partials/operations/{op.id}/details").text
    assert details.index("operation.retry") < details.index("operation.resolve") and "token:oncall" in details


def test_bulk_jobs_record_every_operation_they_change_and_their_result(client):
    ops = [_scheduled() for _ in range(3)]
    preview = _htmx(client, "/admin/bulk-jobs", {"status": "scheduled", "bulk_action": "run_now"})
    assert preview.status_code == 200 and "Run now 3 operations" in preview.text
    job_id = int(re.search(r"bulk-job-(\d+)", preview.text).group(1))
    claimed = ops[0]
    db.session.execute(Operation.__table__.update().where(Operation.id == claimed.id).values(state="running"))
    db.session.commit()
    assert _htmx(client, f"/admin/bulk-jobs/{job_id}/start").status_code == 200
    assert runner.execute(bulk.get_job(job_id).operation_id).outcome == "succeeded"
    job = bulk.get_job(job_id)
    assert (job.state, job.processed, job.succeeded, job.skipped) == ("done", 3, 2, 1)
    states = {op.id: op.state for op in get_operations([op.id for op in ops])}
    assert states == {ops[0].id: "running", ops[1].id: "pending", ops[2].id: "pending"}
    moved = _entries(action="operation.run_now")
    assert sorted(int(e.target_id) for e in moved) == [ops[1].id, ops[2].id]
    assert all(e.details["bulk_job_id"] == job_id for e in moved)
    (result,) = _entries(action="bulk_job.result")
    assert result.actor is None and result.details["state"] == "done" and result.details["changed"] == 2


def test_bulk_reschedule_and_cancel_through_the_api(sqlite_app):
    api = _api(sqlite_app)
    retrying, scheduled = [_retrying() for _ in range(2)], _scheduled()
    target = _later(days=3).replace(microsecond=0)

    def bulk_call(verb, body):
        return api.post(f"/api/admin/operations/bulk-{verb}", json=body, headers=api.auth)

    refused = bulk_call("run-now", {"filters": {"status": "unresolved"}})
    assert refused.status_code == 400 and refused.json["error"] == "invalid_bulk"
    past = bulk_call("reschedule", {"filters": {"status": "retrying"}, "run_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 400 and "not in the future" in past.json["message"]
    assert bulk_call("reschedule", {"filters": {"status": "retrying"}}).json["error"] == "invalid_run_at"

    moved = bulk_call("reschedule", {"filters": {"status": "retrying"}, "run_at": iso(target)})
    assert moved.status_code == 202 and moved.json["bulk_job"]["params"] == {"run_at": iso(target)}
    assert runner.execute(moved.json["bulk_job"]["operation_id"]).outcome == "succeeded"
    after = get_operations([op.id for op in retrying])
    assert {(op.state, op.next_attempt_at) for op in after} == {("scheduled", target)}

    cancelled = bulk_call("cancel", {"filters": {"status": "scheduled"}})
    assert cancelled.json["bulk_job"]["total"] == 3  # the two just rescheduled, and the scheduled one
    assert runner.execute(cancelled.json["bulk_job"]["operation_id"]).outcome == "succeeded"
    job = api.get(f"/api/admin/bulk-jobs/{cancelled.json['bulk_job']['id']}", headers=api.auth).json["bulk_job"]
    assert (job["state"], job["changed"], job["retried"]) == ("done", 3, 0)
    assert {op.state for op in get_operations([scheduled.id, *(op.id for op in retrying)])} == {"cancelled"}
    assert len(_entries(action="operation.reschedule")) == 2 and len(_entries(action="operation.cancel")) == 3
    assert [e.details["action"] for e in _entries(action="bulk_job.result")] == ["reschedule", "cancel"]


def test_audit_rows_are_never_changed_and_only_cleanup_deletes_them_after_their_retention(sqlite_app):
    audit.record("operation.retry", actor="old@example.com", target_type="operation", target_id="1")
    audit.record("operation.retry", actor="new@example.com", target_type="operation", target_id="1")
    db.session.commit()
    old, new = _entries()
    db.session.execute(
        AuditEntry.__table__.update().where(AuditEntry.id == old.id).values(created_at=utcnow() - timedelta(days=366))
    )
    db.session.commit()
    entry = db.session.get(AuditEntry, new.id)
    entry.note = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        db.session.flush()
    db.session.rollback()
    report = cleanup(utcnow(), sqlite_app.config)
    assert report.audit_entries == 1 and [e.actor for e in _entries()] == ["new@example.com"]
    assert _entries()[0].note is None


# --- the JSON endpoint and the page --------------------------------------------------------


def test_audit_log_json_filters_paginates_and_refuses_bad_filters(client, sqlite_app):
    first, second = make_op(), make_op()
    _htmx(client, f"/admin/operations/{first.id}/retry")
    _htmx(client, f"/admin/operations/{second.id}/resolve", {"note": "done"})
    api = _api(sqlite_app)
    assert sqlite_app.test_client().get("/api/admin/audit-log").status_code == 401
    everything = api.get("/api/admin/audit-log", headers=api.auth).json
    assert [e["action"] for e in everything["entries"]][:2] == ["operation.resolve", "operation.retry"]
    resolve = everything["entries"][0]
    assert resolve["actor"] == "admin@example.com" and resolve["address"] == ADDRESS and resolve["at"].endswith("Z")
    by_target = api.get(f"/api/admin/audit-log?target=operation:{first.id}", headers=api.auth).json["entries"]
    assert [e["action"] for e in by_target] == ["operation.retry"]
    by_action = api.get("/api/admin/audit-log?action=operation.resolve&actor=admin@example.com", headers=api.auth)
    assert [e["target_id"] for e in by_action.json["entries"]] == [str(second.id)]
    page = api.get("/api/admin/audit-log?limit=1", headers=api.auth).json
    rest = api.get(f"/api/admin/audit-log?limit=1&cursor={page['next_cursor']}", headers=api.auth).json
    assert page["entries"][0]["id"] != rest["entries"][0]["id"]
    assert api.get("/api/admin/audit-log?range=1h", headers=api.auth).json["filters"]["range"] == "1h"
    assert api.get("/api/admin/audit-log?until=2000-01-01", headers=api.auth).json["entries"] == []
    for bad, code in [
        ("action=operation.explode", "invalid_filter"),
        ("target=planet:3", "invalid_filter"),
        ("since=yesterday", "invalid_filter"),
        ("since=2026-02-01&until=2026-01-01", "invalid_filter"),
        ("range=2y", "invalid_filter"),
        ("actor=%00", "invalid_filter"),
        ("cursor=nope", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
    ]:
        response = api.get(f"/api/admin/audit-log?{bad}", headers=api.auth)
        assert response.status_code == 400 and response.json["error"] == code, (bad, response.json)


def test_audit_page_filters_in_the_url_and_htmx_partial(client):
    op = make_op()
    _htmx(client, f"/admin/operations/{op.id}/retry")
    page = client.get("/admin/audit?action=operation.retry")
    assert (
        page.status_code == 200 and 'data-action="operation.retry"' in page.text and "<h1>Audit log</h1>" in page.text
    )
    assert ADDRESS in page.text and f"operation:{op.id}" in page.text
    fragment = client.get("/admin/audit?action=login", headers={"HX-Request": "true", "HX-Target": "audit-list"}).text
    assert "<h1>" not in fragment and 'data-action="operation.retry"' not in fragment
    assert client.get("/admin/audit?target=nope:1").status_code == 400
    assert client.get("/admin/partials/audit?cursor=bad").status_code == 400


# --- run now, reschedule, retry with N attempts ---------------------------------------------


def test_run_now_reschedule_and_retry_n_through_the_api(sqlite_app):
    api = _api(sqlite_app)
    scheduled, retrying, dead, succeeded = _scheduled(), _retrying(), make_op(attempts=4), make_op(state="succeeded")

    def call(op, verb, body=None):
        return api.post(f"/api/admin/operations/{op.id}/{verb}", json=body or {}, headers=api.auth)

    listed = api.get("/api/admin/operations?status=scheduled", headers=api.auth).json["operations"][0]
    assert listed["run_at"] == iso(scheduled.run_at) and listed["next_attempt_at"] == iso(scheduled.next_attempt_at)

    ran = call(scheduled, "run-now")
    assert ran.status_code == 200 and ran.json["state"] == "pending"
    assert ran.json["next_attempt_at"] <= iso(utcnow()) and ran.json["run_at"] == ran.json["next_attempt_at"]
    again = call(scheduled, "run-now")  # pending: due already, nothing to move
    assert again.status_code == 409 and again.json["error"] == "invalid_state"
    assert call(succeeded, "run-now").status_code == 409
    assert call(Operation(id=10**12), "run-now").status_code == 404

    target = _later(hours=5).replace(microsecond=0)
    moved = call(retrying, "reschedule", {"run_at": iso(target)})
    assert moved.status_code == 200 and moved.json["state"] == "scheduled"
    assert moved.json["run_at"] == moved.json["next_attempt_at"] == iso(target)
    for body in (
        {"run_at": iso(utcnow() - timedelta(minutes=1))},
        {"run_at": iso(_later(days=400))},
        {"run_at": "soon"},
        {},
    ):
        refused = call(retrying, "reschedule", body)
        assert refused.status_code == 400 and refused.json["error"] == "invalid_run_at", body
    assert call(succeeded, "reschedule", {"run_at": iso(target)}).status_code == 409

    retried = call(dead, "retry", {"attempts": 5})
    assert retried.status_code == 200 and (retried.json["attempts"], retried.json["max_attempts"]) == (4, 9)
    for attempts in (0, 21, "3", True, 2.5):
        refused = call(make_op(), "retry", {"attempts": attempts})
        assert refused.status_code == 400 and refused.json["error"] == "invalid_attempts", attempts
    assert db.session.execute(select(func.count()).select_from(AuditEntry)).scalar_one() == 3
    db.session.rollback()


def test_console_buttons_and_bad_input(client):
    scheduled, dead = _scheduled(), make_op()
    row = client.get(f"/admin/partials/operations/{scheduled.id}/row").text
    assert "Run now" in row and "Reschedule" in row and "hx-confirm" in row
    assert "Run now" not in client.get(f"/admin/partials/operations/{dead.id}/row").text
    assert (
        _htmx(client, f"/admin/operations/{scheduled.id}/reschedule", {"run_at": "2000-01-01T00:00"}).status_code == 400
    )
    assert _htmx(client, f"/admin/operations/{scheduled.id}/reschedule", {"run_at": "tomorrow"}).status_code == 400
    target = _later(hours=2).replace(second=0, microsecond=0)
    moved = _htmx(
        client, f"/admin/operations/{scheduled.id}/reschedule", {"run_at": target.isoformat(timespec="minutes")}
    )
    assert moved.status_code == 200 and get_operations([scheduled.id])[0].next_attempt_at == target
    assert _htmx(client, f"/admin/operations/{dead.id}/retry", {"attempts": "99"}).status_code == 400
    assert get_operations([dead.id])[0].state == "dead"
    assert _htmx(client, f"/admin/operations/{dead.id}/retry", {"attempts": "20"}).status_code == 200
    assert get_operations([dead.id])[0].max_attempts == dead.attempts + 20


def test_run_now_never_moves_an_operation_a_worker_claimed(sqlite_app):
    op = _retrying()
    claimed = runner.claim(op.id, now=op.next_attempt_at)  # the worker's conditional UPDATE wins
    assert claimed[0].state == "running"
    with pytest.raises(operations.OperationError, match="is running"):
        operations.run_now(op.id)
    assert get_operations([op.id])[0].state == "running" and _entries() == []


def _lock_waits(connection) -> int:
    """Sessions of this database waiting for a row lock (a fresh statistics snapshot each call)."""
    waiting = connection.execute(
        text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    ).scalar_one()
    connection.rollback()  # pg_stat_activity is read once per transaction
    return waiting


@pytest.mark.postgres
@pytest.mark.redis
def test_run_now_waiting_behind_a_claim_on_postgresql_finds_it_running(tmp_path, templates):
    """The real race: a worker's claim holds the row; run now waits for it, then re-checks and refuses."""
    with postgres_app(tmp_path, templates) as app:
        op = _retrying()
        due = utcnow()
        result = {}

        def admin_runs_it_now():
            with app.app_context():
                try:
                    operations.run_now(op.id)
                    result["moved"] = True
                except operations.OperationError:
                    result["moved"] = False
                finally:
                    db.session.remove()

        with db.engine.connect() as worker, db.engine.connect() as observer:
            claimed = worker.execute(  # the claim's conditional UPDATE, not yet committed
                update(Operation)
                .where(Operation.id == op.id, Operation.state.in_(["scheduled", "pending", "retrying"]))
                .values(state="running", next_attempt_at=due, attempts=Operation.attempts + 1)
            ).rowcount
            assert claimed == 1
            admin = threading.Thread(target=admin_runs_it_now)
            admin.start()
            wait_for(lambda: _lock_waits(observer), message="run now to wait on the claimed row")
            worker.commit()
            admin.join(timeout=30)
        assert result == {"moved": False}
        assert get_operations([op.id])[0].state == "running"
