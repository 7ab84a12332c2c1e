"""The admin JSON API: bearer tokens of scope admin, its shapes, Z timestamps, refused notes, tokens from the CLI."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select

from tests.support.console import make_op, resolved_notes
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import BulkJob, OperationAttempt
from webapp.models.email import EmailLog
from webapp.services.access import tokens
from webapp.services.console import bulk
from webapp.services.console.filters import Filters

# --- admin JSON API -----------------------------------------------------------------------


def test_admin_api_requires_an_admin_token(sqlite_app):
    client = sqlite_app.test_client()
    storefront = tokens.create_token("shop", "storefront").raw
    revoked = tokens.create_token("old", "admin")
    tokens.revoke_token(revoked.token.id)
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {storefront}"},
        {"Authorization": f"Bearer {revoked.raw}"},
        {"Authorization": "Basic abc"},
    ):
        response = client.get("/api/admin/operations", headers=headers)
        assert response.status_code == 401
        assert response.json["error"] == "unauthorized" and response.json["message"]


def test_admin_api_shapes(sqlite_app):
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    dead = [make_op(kind="webhook", error="Database down") for _ in range(3)]
    make_op(state="succeeded")

    listed = client.get("/api/admin/operations?kind=webhook&limit=2", headers=auth).json
    assert len(listed["operations"]) == 2 and listed["next_cursor"]
    rest = client.get(f"/api/admin/operations?kind=webhook&limit=2&cursor={listed['next_cursor']}", headers=auth).json
    assert len(rest["operations"]) == 1 and rest["next_cursor"] is None
    one = client.get(f"/api/admin/operations/{dead[0].id}", headers=auth).json
    assert one["id"] == dead[0].id and "attempts_log" in one and one["error_message"] == "Database down"

    retried = client.post(f"/api/admin/operations/{dead[0].id}/retry", headers=auth)
    assert retried.status_code == 200 and retried.json["state"] == "pending"
    conflict = client.post(f"/api/admin/operations/{dead[0].id}/retry", headers=auth)
    assert conflict.status_code == 409 and conflict.json["error"] == "invalid_state"
    resolved = client.post(f"/api/admin/operations/{dead[1].id}/resolve", json={"note": "handled"}, headers=auth)
    assert resolved.json["resolved_by"] == "token:ops" and resolved.json["resolution_note"] == "handled"
    assert (
        client.post(
            f"/api/admin/operations/{dead[1].id}/resolve", data="[1]", headers=auth, content_type="application/json"
        ).json["error"]
        == "invalid_json"
    )

    bulk_response = client.post("/api/admin/operations/bulk-retry", json={"filters": {"kind": "webhook"}}, headers=auth)
    assert bulk_response.status_code == 202
    job = bulk_response.json["bulk_job"]
    assert job["total"] == 1 and job["state"] == "queued"
    assert client.get(f"/api/admin/bulk-jobs/{job['id']}", headers=auth).json["bulk_job"]["id"] == job["id"]

    health = client.get("/api/admin/queue-health", headers=auth).json
    assert {"healthy", "metrics", "queue", "stats", "timestamp"} <= set(health)
    stats = client.get("/api/admin/delivery-stats?range=24h", headers=auth).json
    assert stats["range"] == "24h" and stats["summary"]["total"] == 5 and stats["summary"]["dead"] == 2
    assert stats["by_name"]["admin.bulk_retry"]["total"] == 1  # the bulk job is an operation too
    failures = client.get("/api/admin/recent-failures?limit=20", headers=auth).json
    assert failures["count"] == len(failures["failures"]) == 2
    dlq = client.get("/api/admin/dead-letter-queue", headers=auth).json
    # dead[0] was retried, dead[1] resolved; dead[2] waits in the (not yet run) bulk job.
    assert dlq["count"] == 1 and dlq["dead_letters"][0]["id"] == dead[2].id
    assert dlq["dead_letters"][0]["payload"] == dead[2].payload and dlq["dead_letters"][0]["error_stack"]
    metrics = client.get("/api/admin/health?window=1h", headers=auth).json
    assert {m["key"] for m in metrics["metrics"]} >= {"email_delivery_rate", "queue_depth"}

    for url, code in (
        ("/api/admin/operations?kind=zzz", "invalid_filter"),
        ("/api/admin/operations?limit=0", "invalid_limit"),
        ("/api/admin/operations?cursor=bad", "invalid_cursor"),
        ("/api/admin/operations/424242", "not_found"),
        ("/api/admin/delivery-stats?range=9y", "invalid_range"),
    ):
        response = client.get(url, headers=auth)
        assert 400 <= response.status_code < 500 and response.json["error"] == code, url
        assert set(response.json) == {"error", "message"}
    assert client.delete("/api/admin/operations/1", headers=auth).json["error"] == "method_not_allowed"


ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _timestamps(value, path="") -> dict:
    """Every ISO date-time string inside a JSON value, by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _timestamps(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _timestamps(item, f"{path}[{i}]").items()}
    return {path: value} if isinstance(value, str) and ISO_TIME.match(value) else {}


def test_every_admin_api_timestamp_is_utc_with_z(sqlite_app):
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    dead = [make_op(kind="webhook", last_attempt_at=utcnow()) for _ in range(2)]
    started = utcnow() - timedelta(minutes=3)
    db.session.add(OperationAttempt(operation_id=dead[0].id, number=1, started_at=started, finished_at=started))
    db.session.add(
        EmailLog(operation_id=dead[0].id, attempt=1, to_address="a@example.com", template="welcome", status="sent")
    )
    db.session.commit()
    since = (utcnow() - timedelta(days=1)).isoformat(timespec="seconds")
    client.post(f"/api/admin/operations/{dead[1].id}/resolve", json={"note": "handled"}, headers=auth)
    client.post("/api/admin/pauses/test.succeed/pause", json={}, headers=auth)
    job = client.post(
        "/api/admin/operations/bulk-retry", json={"filters": {"kind": "webhook", "since": since}}, headers=auth
    ).json["bulk_job"]

    answers = {
        url: client.get(url, headers=auth).json
        for url in (
            f"/api/admin/operations?status=all&since={since}",
            f"/api/admin/operations/{dead[0].id}",
            f"/api/admin/operations/{dead[1].id}",
            f"/api/admin/bulk-jobs/{job['id']}",
            "/api/admin/recent-failures",
            "/api/admin/dead-letter-queue",
            "/api/admin/pauses",
            "/api/admin/queue-health",
        )
    }

    stamps = _timestamps(answers)
    assert {path: stamp for path, stamp in stamps.items() if not stamp.endswith("Z")} == {}
    one = answers[f"/api/admin/operations/{dead[0].id}"]
    assert one["created_at"].endswith("Z") and one["dead_at"].endswith("Z") and one["last_attempt_at"].endswith("Z")
    assert one["attempts_log"][0]["started_at"].endswith("Z") and one["email_log"][0]["created_at"].endswith("Z")
    assert answers[f"/api/admin/operations/{dead[1].id}"]["resolved_at"].endswith("Z")
    assert answers[f"/api/admin/operations?status=all&since={since}"]["filters"]["since"] == since + "Z"
    recorded = answers[f"/api/admin/bulk-jobs/{job['id']}"]["bulk_job"]
    assert recorded["created_at"].endswith("Z") and recorded["filters"]["since"] == since + "Z"
    paused = {item["name"]: item for item in answers["/api/admin/pauses"]["pauses"]}
    assert paused["test.succeed"]["paused_at"].endswith("Z")
    assert datetime.fromisoformat(one["dead_at"]).replace(tzinfo=None) == dead[0].dead_at


def test_a_bulk_job_recorded_with_naive_times_is_answered_with_z(sqlite_app):
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    job = bulk.create_draft(Filters(kind="webhook"), by="ops")
    # The record as it was written before times carried their Z.
    db.session.execute(
        BulkJob.__table__.update()
        .where(BulkJob.id == job.id)
        .values(filters={**Filters(kind="webhook").to_json(), "since": "2024-05-01T12:00:00"})
    )
    db.session.commit()

    answered = client.get(f"/api/admin/bulk-jobs/{job.id}", headers=auth).json["bulk_job"]["filters"]

    assert answered["since"] == "2024-05-01T12:00:00Z" and answered["kind"] == "webhook"
    assert answered["until"] is None


def test_admin_api_refuses_an_over_long_note_and_resolves_nothing(sqlite_app):
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {tokens.create_token('ops', 'admin').raw}"}
    operation = make_op()
    url = f"/api/admin/operations/{operation.id}/resolve"

    refused = client.post(url, json={"note": "x" * 2001}, headers=auth)

    assert refused.status_code == 400 and refused.json["error"] == "invalid_note"
    assert set(refused.json) == {"error", "message"} and "2000" in refused.json["message"]
    assert resolved_notes(operation.id) == {operation.id: False}
    not_text = client.post(url, json={"note": 42}, headers=auth)
    assert not_text.status_code == 400 and not_text.json["error"] == "invalid_note"
    accepted = client.post(url, json={"note": "y" * 2000}, headers=auth)
    assert accepted.status_code == 200 and accepted.json["resolution_note"] == "y" * 2000


# --- admin tokens ---


def test_admin_tokens_made_and_revoked_by_the_cli_are_stored_hashed(sqlite_app):
    from webapp.models import ApiToken

    cli = sqlite_app.test_cli_runner()
    created = cli.invoke(args=["tokens", "create", "--scope", "admin", "--name", "oncall"])
    assert created.exit_code == 0, created.output
    raw = created.output.strip().splitlines()[-1]
    assert raw.startswith("bst_ad_")
    stored = db.session.execute(select(ApiToken)).scalar_one()
    assert stored.token_hash == tokens.hash_token(raw) and raw not in (stored.token_hash, stored.prefix)
    db.session.rollback()
    client = sqlite_app.test_client()
    auth = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/admin/queue-health", headers=auth).status_code == 200
    listed = cli.invoke(args=["tokens", "list"])
    assert "oncall" in listed.output and raw not in listed.output
    revoked = cli.invoke(args=["tokens", "revoke", str(stored.id)])
    assert revoked.exit_code == 0, revoked.output
    response = client.get("/api/admin/queue-health", headers=auth)
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
