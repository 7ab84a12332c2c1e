"""Issues: failures grouped by stored fingerprint, counted in SQL, acted on as groups."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import _sqlite_backend
from tests.support.console import listed_ids, make_op, post
from webapp.domain.fingerprints import fingerprint_of, normalise_error
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.failures import get_operations, list_operations
from webapp.services.console.filters import NO_FINGERPRINT, Filters
from webapp.services.console.issues import group_failures
from webapp.services.engine import operations, runner

# --- issues / fingerprints ----------------------------------------------------------------


def test_fingerprint_normalisation():
    a = (
        "550 5.1.1 <bob.smith@example.org>: Recipient 123e4567-e89b-12d3-a456-426614174000"
        " rejected after 30s (id 9f3a2c91d0e4)"
    )
    b = "550 5.1.1 <x@y.io>: Recipient 00000000-0000-0000-0000-0000000000ff rejected after 2s (id deadbeef1234)"
    assert normalise_error(a) == "<n> <n> <<email>>: Recipient <uuid> rejected after <n>s (id <hex>)"
    assert normalise_error("took 1.5 s, 20 ms") == "took <n> s, <n> ms"
    assert fingerprint_of("SMTPError", a) == fingerprint_of("SMTPError", b)
    assert fingerprint_of("SMTPError", a) != fingerprint_of("OtherError", a)
    assert fingerprint_of("E", "No purchase for cs_test_a1B2c3") == fingerprint_of("E", "No purchase for cs_test_ZZ9")
    assert fingerprint_of("E", "timeout") != fingerprint_of("E", "refused")
    assert normalise_error("Stripe 0xFF retrieving pi_3Nx8KdL2") == "Stripe <hex> retrieving <id>"


def test_issues_group_by_fingerprint_and_act_on_groups(client):
    timeouts = [make_op(error=f"SMTP timeout after {n}s") for n in (5, 17, 30)]
    refused = make_op(error="Connection refused by 10.0.0.1")
    html = client.get("/admin/issues").text
    assert "SMTP timeout after &lt;n&gt;s" in html and re.search(r'<td class="num">3</td>', html)
    key = fingerprint_of("TransientError", "SMTP timeout after 1s")
    listed = client.get(f"/admin/failed-operations?fingerprint={key}").text
    assert set(listed_ids(listed)) == {op.id for op in timeouts}
    preview = post(client, f"/admin/issues/{key}/retry", {"status": "unresolved"})
    assert "Retry 3 operations" in preview.text
    response = post(client, f"/admin/issues/{key}/resolve", {"note": "provider outage"})
    assert "Resolved 3 operations" in response.text
    states = {op.id: op.resolved_at is not None for op in get_operations([*(op.id for op in timeouts), refused.id])}
    assert states == {**{op.id: True for op in timeouts}, refused.id: False}


# --- stored fingerprints, grouped in SQL ----------------------------------------------------


def test_the_engine_stores_the_fingerprint_when_an_operation_dies(app):

    operation = operations.create_operation("test.permanent", {}, idempotency_key="fp-1")
    db.session.commit()
    assert runner.execute(operation.id).outcome == "dead"
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.error_message and stored.error_fingerprint == fingerprint_of(stored.error_class, stored.error_message)
    db.session.rollback()
    # The Issues view and the fingerprint filter find it by the stored value.
    found = group_failures(Filters(status="all"))
    assert [(issue.fingerprint, issue.count) for issue in found.issues] == [(stored.error_fingerprint, 1)]
    assert [op.id for op in list_operations(Filters(status="all", fingerprint=stored.error_fingerprint)).rows] == [
        operation.id
    ]


def test_issues_count_every_failure_and_say_how_many_groups_are_shown(app):
    for n in range(5):
        make_op(error=f"SMTP timeout after {n}s", name="email.welcome" if n % 2 else "email.refund")
    for n in range(3):
        make_op(error=f"Connection refused by 10.0.0.{n}")
    make_op(error="Mailbox full")
    make_op(error="Mailbox full", resolved_at=utcnow(), resolved_by="x")  # not in "unresolved"
    found = group_failures(Filters(), shown=2)
    assert (found.total_groups, found.total_failures) == (3, 9)
    top = found.issues
    assert [issue.count for issue in top] == [5, 3]
    assert top[0].names == {"email.welcome", "email.refund"} and top[0].sample == "SMTP timeout after <n>s"
    assert top[0].first_seen <= top[0].last_seen
    everything = group_failures(Filters(status="all"))
    assert {issue.sample: (issue.count, issue.unresolved) for issue in everything.issues}["Mailbox full"] == (2, 1)


def test_issues_page_shows_totals_and_rejects_a_malformed_fingerprint(client, sqlite_app):
    make_op(error="SMTP timeout after 3s")
    make_op(error="Database down")
    html = client.get("/admin/issues").text
    assert "2 failures in 2 groups." in html
    assert client.get("/admin/failed-operations?fingerprint=zz").status_code == 400
    assert client.get("/admin/failed-operations?fingerprint=none").status_code == 200


def test_resolving_a_group_leaves_failures_that_arrived_after_the_page_was_shown(client):
    shown = [make_op(error=f"SMTP timeout after {n}s") for n in (1, 2)]
    html = client.get("/admin/issues").text
    as_of = re.search(r'name="until" value="([^"]+)"', html).group(1)
    late = make_op(error="SMTP timeout after 9s", dead_ago=timedelta(seconds=-5))  # dies after the page
    key = fingerprint_of("TransientError", "SMTP timeout after 1s")
    response = post(client, f"/admin/issues/{key}/resolve", {"note": "provider outage", "until": as_of})
    assert "Resolved 2 operations" in response.text
    resolved = {op.id: op.resolved_at is not None for op in get_operations([*(op.id for op in shown), late.id])}
    assert resolved == {shown[0].id: True, shown[1].id: True, late.id: False}
    too_long = post(client, f"/admin/issues/{key}/resolve", {"note": "x" * 2001, "until": as_of})
    assert too_long.status_code == 400


def test_refingerprint_command_repairs_stale_fingerprints(sqlite_app):
    operation = make_op(error="SMTP timeout after 3s")
    db.session.execute(
        Operation.__table__.update().where(Operation.id == operation.id).values(error_fingerprint="0000000000000000")
    )
    db.session.commit()
    result = sqlite_app.test_cli_runner().invoke(args=["refingerprint"])
    assert result.exit_code == 0 and "refingerprinted 1 operation" in result.output
    stored = db.session.get(Operation, operation.id, populate_existing=True)
    assert stored.error_fingerprint == fingerprint_of("TransientError", "SMTP timeout after 3s")


def test_migration_0006_fingerprints_existing_failures(tmp_path):
    import flask_migrate
    from sqlalchemy import text

    from webapp import create_app

    app = create_app(_sqlite_backend(tmp_path).config())  # an empty database, migrated step by step here
    with app.app_context():
        flask_migrate.upgrade(revision="0005")
        db.session.execute(
            text(
                "INSERT INTO operations (kind, name, payload, idempotency_key, state, attempts, max_attempts, "
                "next_attempt_at, created_at, updated_at, dead_at, error_class, error_message) VALUES "
                "('email', 'email.welcome', '{}', 'old-1', 'dead', 4, 4, '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'SMTPError', "
                "'421 busy, try in 30s')"
            )
        )
        db.session.commit()
        flask_migrate.upgrade()
        stored = db.session.execute(text("SELECT error_fingerprint FROM operations")).scalar_one()
        assert stored == fingerprint_of("SMTPError", "421 busy, try in 30s")
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("status", ["unresolved", "resolved", "all"])
def test_issue_counts_and_times_match_a_direct_grouping_of_the_rows(app, status):
    """Each group's count, unresolved count, first and last seen equal those of its rows, per status and filter."""
    now = utcnow()
    for n in range(12):
        op = make_op(
            kind=("email", "webhook")[n % 2],
            name=("email.welcome", "stripe.charge.refunded", "job.cleanup")[n % 3],
            error=(f"SMTP 421 busy {n}", "boom", None)[n % 3],
            dead_ago=timedelta(hours=n * 7),
        )
        if n % 4 == 0:
            op.resolved_at = now
    make_op(state="retrying", error=None)
    db.session.commit()
    rows = db.session.execute(select(Operation).where(Operation.state == "dead")).scalars().all()
    for extra in ({}, {"kind": "webhook"}, {"name": "email.welcome"}, {"range": "24h"}):
        filters = Filters(status=status, **extra)
        since = now - timedelta(hours=24) if extra.get("range") else None
        chosen = [
            op
            for op in rows
            if (status == "all" or (op.resolved_at is None) == (status == "unresolved"))
            and all(getattr(op, key) == value for key, value in extra.items() if key != "range")
            and (since is None or op.dead_at >= since)
        ]
        expected = {}
        for op in chosen:
            group = expected.setdefault(op.error_fingerprint or NO_FINGERPRINT, [])
            group.append(op)
        found = {issue.fingerprint: issue for issue in group_failures(filters, now=now).issues}
        assert set(found) == set(expected), extra
        for fingerprint, ops in expected.items():
            issue = found[fingerprint]
            assert issue.count == len(ops), extra
            assert issue.unresolved == sum(op.resolved_at is None for op in ops), extra
            assert issue.names == {op.name for op in ops}, extra
            assert issue.first_seen == min(op.dead_at for op in ops), extra
            assert issue.last_seen == max(op.dead_at for op in ops), extra
