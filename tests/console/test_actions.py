"""Row actions: retry, resolve with a note (and its one limit), cancel, and actions on a selection."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support.console import listed_ids, make_op, post, resolved_notes
from webapp.domain.fingerprints import fingerprint_of
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console import bulk
from webapp.services.console.failures import get_operations
from webapp.services.console.filters import Filters
from webapp.services.engine import operations

# --- row actions --------------------------------------------------------------------------


def test_retry_swaps_the_row_and_polls_until_terminal(client):
    operation = make_op()
    response = post(client, f"/admin/operations/{operation.id}/retry")
    assert response.status_code == 200
    assert f'<tbody id="op-{operation.id}"' in response.text
    assert 'data-state="pending"' in response.text and 'hx-trigger="every 1s"' in response.text
    assert response.headers["HX-Trigger"] == "statsChanged"
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.state == "pending" and stored.resolution_note == "retried by admin@example.com"
    db.session.rollback()
    # Once terminal the row stops polling.
    db.session.execute(
        Operation.__table__.update()
        .where(Operation.id == operation.id)
        .values(state="succeeded", succeeded_at=utcnow())
    )
    db.session.commit()
    row = client.get(f"/admin/partials/operations/{operation.id}/row").text
    assert 'data-state="succeeded"' in row and "hx-trigger" not in row
    again = post(client, f"/admin/operations/{make_op(state='succeeded').id}/retry")
    assert again.status_code == 409 and "Not retried: operation" in again.text and "is succeeded now" in again.text
    assert again.headers["X-Row-State"] == "succeeded" and 'data-state="succeeded"' in again.text


def test_resolve_with_note_records_who_and_when(client):
    operation = make_op()
    response = post(client, f"/admin/operations/{operation.id}/resolve", {"note": "refunded by hand"})
    assert response.status_code == 200 and "resolved by admin@example.com" in response.text
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.resolved_by == "admin@example.com" and stored.resolution_note == "refunded by hand"
    assert stored.resolved_at is not None
    db.session.rollback()
    assert post(client, f"/admin/operations/{operation.id}/resolve").status_code == 409
    assert post(client, "/admin/operations/999999/resolve").status_code == 404


def test_cancel_a_scheduled_operation(client):
    later = utcnow() + timedelta(days=1)
    operation = make_op(state="scheduled", run_at=later, next_attempt_at=later)
    assert operation.id in listed_ids(client.get("/admin/failed-operations?status=scheduled").text)
    response = post(client, f"/admin/operations/{operation.id}/cancel")
    assert response.status_code == 200 and 'data-state="cancelled"' in response.text
    assert post(client, f"/admin/operations/{operation.id}/cancel").status_code == 409


def test_bulk_selected_retry_and_resolve(client):
    first, second, third = make_op(), make_op(), make_op(state="succeeded")
    response = post(client, "/admin/operations/bulk", {"action": "retry", "ids": [first.id, third.id]})
    assert response.status_code == 200 and "Retried 1 operation" in response.text and "1 skipped" in response.text
    assert "opsChanged" in response.headers["HX-Trigger"]
    response = post(client, "/admin/operations/bulk", {"action": "resolve", "ids": [second.id], "note": "dup"})
    assert "Resolved 1 operation" in response.text
    states = {op.id: (op.state, op.resolution_note) for op in get_operations([first.id, second.id])}
    assert states == {first.id: ("pending", "retried by admin@example.com"), second.id: ("dead", "dup")}
    assert post(client, "/admin/operations/bulk", {"action": "retry"}).status_code == 400
    assert post(client, "/admin/operations/bulk", {"action": "explode", "ids": [1]}).status_code == 400


def test_an_over_long_note_is_refused_everywhere_and_resolves_nothing(client):
    single, first, second = make_op(), make_op(), make_op()
    grouped = make_op(error="Ledger export rejected")
    key = fingerprint_of("TransientError", "Ledger export rejected")
    too_long, longest = "x" * 2001, "y" * 2000

    refusals = (
        post(client, f"/admin/operations/{single.id}/resolve", {"note": too_long}),
        post(client, "/admin/operations/bulk", {"action": "resolve", "ids": [first.id, second.id], "note": too_long}),
        post(client, f"/admin/issues/{key}/resolve", {"note": too_long}),
    )

    for response in refusals:
        assert response.status_code == 400 and "limited to 2000 characters" in response.text
    assert resolved_notes(single.id, first.id, second.id, grouped.id) == dict.fromkeys(
        (single.id, first.id, second.id, grouped.id), False
    )

    assert post(client, f"/admin/operations/{single.id}/resolve", {"note": longest}).status_code == 200
    bulk_response = post(client, "/admin/operations/bulk", {"action": "resolve", "ids": [first.id], "note": longest})
    assert "Resolved 1 operation" in bulk_response.text
    assert "Resolved 1 operation" in post(client, f"/admin/issues/{key}/resolve", {"note": longest}).text
    assert resolved_notes(single.id, first.id, second.id, grouped.id) == {
        single.id: longest,
        first.id: longest,
        second.id: False,
        grouped.id: longest,
    }


def test_a_note_is_judged_as_stored_and_refused_whole_by_each_service(app):
    refused, accepted, batch = make_op(), make_op(), make_op()
    grouped = make_op(error="Ledger export rejected")
    group = Filters(status="unresolved", fingerprint=fingerprint_of("TransientError", "Ledger export rejected"))

    with pytest.raises(operations.NoteTooLong, match="limited to 2000 characters"):
        operations.resolve(refused.id, by="ops", note="x" * 2001)
    with pytest.raises(operations.NoteTooLong):
        bulk.resolve_ids([refused.id, batch.id], by="ops", note="x" * 2001)
    with pytest.raises(operations.NoteTooLong):
        bulk.resolve_matching(group, by="ops", note="x" * 2001)
    operations.resolve(accepted.id, by="ops", note="  " + "y" * 2000 + "\n")  # surrounding blanks are not kept

    assert resolved_notes(refused.id, accepted.id, batch.id, grouped.id) == {
        refused.id: False,
        accepted.id: "y" * 2000,
        batch.id: False,
        grouped.id: False,
    }


def test_the_note_fields_carry_the_services_limit(client, monkeypatch):
    make_op()
    monkeypatch.setattr(operations, "MAX_NOTE", 50)
    for html in (client.get("/admin/failed-operations").text, client.get("/admin/issues").text):
        assert html.count('name="note"') >= 1
        assert html.count('name="note"') == html.count('maxlength="50"')
