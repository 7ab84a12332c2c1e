"""Stripe intake at the service level: what a verified event must look like, and how it is stored."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.engine import RecordingDoorbell, ringing_into
from tests.support.logs import records_of
from tests.support.postgres import postgres_app
from webapp.config import load as load_settings
from webapp.devdata.stripe_samples import build_event
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, StripeEvent, WebhookRejection
from webapp.services.payments import intake
from webapp.services.payments.intake import WebhookRejected

NOW = datetime(2030, 1, 1, 12, 0, 0)
SECRET = "whsec_intake_tests"


def event(**fields) -> dict:
    """A minimal valid event, with ``fields`` replacing its top-level fields."""
    body = {"id": "evt_1", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
    body.update(fields)
    return body


def parsed(body: dict) -> dict:
    return intake.parse_event(json.dumps(body))


def refused(body: dict) -> str:
    with pytest.raises(WebhookRejected) as raised:
        parsed(body)
    assert raised.value.reason == intake.INVALID_PAYLOAD
    return raised.value.message


@pytest.fixture
def stripe_log():
    """Records of the ``backstop.stripe`` logger (which does not propagate)."""
    with records_of("backstop.stripe") as records:
        yield records


# --- what a verified body must be ---------------------------------------------------------------


def test_ids_and_types_are_accepted_up_to_their_column_widths_and_refused_beyond():
    assert parsed(event(id="e" * 255))["id"] == "e" * 255
    assert "no valid id" in refused(event(id="e" * 256))
    assert parsed(event(type="t" * 120))["type"] == "t" * 120
    assert "no valid type" in refused(event(type="t" * 121))
    assert parsed(event(data={"object": {"id": "o" * 255}}))
    assert "invalid id" in refused(event(data={"object": {"id": "o" * 256}}))


def test_blank_or_missing_ids_and_types_are_refused():
    assert "no valid id" in refused(event(id="   "))
    assert "no valid type" in refused(event(type=""))
    assert "no valid type" in refused({k: v for k, v in event().items() if k != "type"})
    assert "invalid id" in refused(event(data={"object": {"id": " "}}))


def test_an_object_without_an_id_and_an_event_without_the_object_field_are_accepted():
    body = {k: v for k, v in event(data={"object": {"amount": 5}}).items() if k != "object"}

    assert parsed(body)["data"]["object"] == {"amount": 5}


def test_verify_names_why_a_delivery_is_refused():
    body = json.dumps(event())
    reasons = {}
    for case, secrets, header, payload in [
        ("no secret", [], signing.header(body, SECRET), body.encode()),
        ("no header", [SECRET], None, body.encode()),
        ("empty header", [SECRET], "", body.encode()),
        ("not UTF-8", [SECRET], signing.header(body, SECRET), b"\xff" + body.encode()),
        ("wrong secret", [SECRET], signing.header(body, "whsec_other"), body.encode()),
        ("too old", [SECRET], signing.header(body, SECRET, timestamp=int(time.time()) - 400), body.encode()),
    ]:
        with pytest.raises(WebhookRejected) as raised:
            intake.verify(payload, header, secrets)
        reasons[case] = raised.value.reason

    assert reasons == {
        "no secret": intake.NOT_CONFIGURED,
        "no header": intake.MISSING_SIGNATURE,
        "empty header": intake.MISSING_SIGNATURE,
        "not UTF-8": intake.INVALID_SIGNATURE,
        "wrong secret": intake.INVALID_SIGNATURE,
        "too old": intake.STALE_TIMESTAMP,
    }


def test_a_signature_is_accepted_for_five_minutes_and_stale_after(monkeypatch):
    signed_at = 1_900_000_000
    body = json.dumps(event())
    header = signing.header(body, SECRET, timestamp=signed_at)
    monkeypatch.setattr(intake, "time", SimpleNamespace(time=lambda: signed_at + 300))

    assert intake.verify(body.encode(), header, [SECRET])["id"] == "evt_1"
    monkeypatch.setattr(intake, "time", SimpleNamespace(time=lambda: signed_at + 301))
    with pytest.raises(WebhookRejected) as raised:
        intake.verify(body.encode(), header, [SECRET])
    assert raised.value.reason == intake.STALE_TIMESTAMP


@pytest.mark.parametrize("layout", ["signature first", "extra '=' after the timestamp"])
def test_the_signature_header_is_read_as_the_sdk_reads_it(monkeypatch, layout):
    signed_at = 1_900_000_000
    body = json.dumps(event())
    signature = signing.sign(body, SECRET, signed_at)
    header = {
        "signature first": f"v1={signature},t={signed_at}",
        "extra '=' after the timestamp": f"t={signed_at}=x,v1={signature}",  # the SDK splits at most twice
    }[layout]
    monkeypatch.setattr(intake, "time", SimpleNamespace(time=lambda: signed_at + 300))

    assert intake.verify(body.encode(), header, [SECRET])["id"] == "evt_1"
    monkeypatch.setattr(intake, "time", SimpleNamespace(time=lambda: signed_at + 301))
    with pytest.raises(WebhookRejected) as raised:
        intake.verify(body.encode(), header, [SECRET])
    assert raised.value.reason == intake.STALE_TIMESTAMP


def test_a_signature_within_the_tolerance_is_accepted_with_any_current_secret():
    body = json.dumps(event())
    header = signing.header(body, "whsec_old", SECRET)

    assert intake.verify(body.encode(), header, ["whsec_new", SECRET])["id"] == "evt_1"
    assert load_settings({"STRIPE_WEBHOOK_SECRET": " whsec_a, whsec_b ,"})["STRIPE_WEBHOOK_SECRET"] == (
        "whsec_a",
        "whsec_b",
    )


def test_a_blank_secret_matches_nothing_as_in_the_sdk():
    body = json.dumps(event())

    for blank in ("", "  \t"):  # whoever knows the secret is blank could sign anything
        with pytest.raises(WebhookRejected) as raised:
            intake.verify(body.encode(), signing.header(body, blank), [blank])
        assert raised.value.reason == intake.INVALID_SIGNATURE
    assert intake.verify(body.encode(), signing.header(body, SECRET), ["   ", SECRET])["id"] == "evt_1"


def last_rejected(reason: str) -> datetime:
    last_at = db.session.get(WebhookRejection, reason).last_at
    db.session.rollback()
    return last_at


# --- storing an event ---------------------------------------------------------------------------


def record(body: dict, now=NOW) -> intake.Intake:
    return intake.record_event(json.dumps(body), body, now=now)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])])
def store(request, tmp_path, templates):
    """An app on SQLite or PostgreSQL (where the event and its operation are one statement); records rings."""
    if request.param == "sqlite":
        request.getfixturevalue("sqlite_app")
        with ringing_into(RecordingDoorbell()) as recorder:
            yield recorder
        return
    with postgres_app(tmp_path, templates), ringing_into(RecordingDoorbell()) as recorder:
        yield recorder


def test_a_handled_event_is_stored_received_with_its_operation(store):
    body = build_event("checkout.session.completed", event_id="evt_handled")
    body["livemode"] = True

    stored = record(body)

    assert (stored.created, stored.processing_state) == (True, "received")
    row = shop.event("evt_handled")
    assert (row.livemode, row.received_at, row.processed_at) == (True, NOW, None)
    operation = shop.operation(stored.operation_id)
    assert operation.name == "stripe.checkout.session.completed"
    assert operation.payload == {
        "event_id": "evt_handled",
        "type": "checkout.session.completed",
        "object_id": body["data"]["object"]["id"],
        "received_at": NOW.isoformat(),
    }
    assert operation.idempotency_key == "stripe-event:evt_handled"
    assert operation.subject == f"stripe:{body['data']['object']['id']}"  # no purchase in its metadata
    assert (operation.state, operation.next_attempt_at) == ("pending", NOW)
    assert [operation_id for operation_id, _ in store.rings] == [stored.operation_id]  # rung once committed


def test_an_unhandled_event_is_stored_ignored_and_processed_at_once(store):
    stored = record(event(id="evt_ignored"))

    assert (stored.created, stored.processing_state, stored.operation_id) == (True, "ignored", None)
    assert shop.event("evt_ignored").processed_at == NOW


def test_a_replay_returns_what_was_stored_first(store):
    first = record(event(id="evt_twice"))
    again = record(event(id="evt_twice", type="customer.updated"), now=NOW + timedelta(hours=1))

    assert again == intake.Intake("evt_twice", "customer.created", False, "ignored", None)
    assert first.created is True


def test_a_replay_whose_event_row_retention_removed_is_still_a_replay(store):
    first = record(build_event("checkout.session.completed", event_id="evt_pruned"))
    db.session.execute(delete(StripeEvent).where(StripeEvent.id == "evt_pruned"))  # retention kept the operation
    db.session.commit()

    again = record(build_event("checkout.session.completed", event_id="evt_pruned"), now=NOW + timedelta(days=40))

    assert first.created is True
    assert again == intake.Intake("evt_pruned", "checkout.session.completed", False, "unknown", None)


def test_an_event_id_stored_under_another_operation_writes_nothing_and_returns_the_stored_event(store):
    first = record(build_event("checkout.session.completed", event_id="evt_orphan"))
    # The operation is gone (its key free again) while the event row stays: the new operation's
    # INSERT succeeds and the event's fails; neither may remain.
    db.session.execute(delete(Operation).where(Operation.id == first.operation_id))
    db.session.commit()

    again = record(build_event("checkout.session.completed", event_id="evt_orphan"), now=NOW + timedelta(hours=1))

    assert (again.event_id, again.created, again.processing_state) == ("evt_orphan", False, "received")
    assert db.session.execute(select(func.count()).select_from(Operation)).scalar() == 0
    assert len(store.rings) == 1


def test_a_delivery_that_loses_the_race_to_a_concurrent_one_returns_the_stored_event(store, monkeypatch):
    record(event(id="evt_race"))
    lookups = iter([None])  # the first look finds nothing: the other delivery has not committed yet
    real_existing = intake._existing
    monkeypatch.setattr(intake, "_existing", lambda event_id: next(lookups, None) or real_existing(event_id))

    again = record(event(id="evt_race"))

    assert (again.event_id, again.created, again.processing_state) == ("evt_race", False, "ignored")


def test_an_integrity_error_that_is_not_a_replay_is_raised(store, monkeypatch):
    def conflict(raw, body, now):
        raise IntegrityError("INSERT INTO stripe_events", {}, Exception("another constraint"))

    monkeypatch.setattr(intake, "_store", conflict)

    with pytest.raises(IntegrityError):
        record(event(id="evt_broken"))


@pytest.mark.parametrize(
    "api_version, stored",
    [
        ("2024-06-20", "2024-06-20"),
        (20240620, "20240620"),
        (True, None),
        ("   ", None),
        ("v\x00", None),
        ("x" * 50, "x" * 40),
    ],
)
def test_the_api_version_is_kept_only_as_printable_text(sqlite_app, api_version, stored):
    record(event(id="evt_version", api_version=api_version))

    assert shop.event("evt_version").api_version == stored


@pytest.mark.parametrize(
    "data_object, subject",
    [
        ({"id": "cs_1", "metadata": {"purchase_id": "42"}}, "purchase:42"),
        ({"id": "cs_1", "metadata": {"purchase_id": 42}}, "purchase:42"),
        ({"id": "cs_1", "metadata": {"purchase_id": "  "}}, "stripe:cs_1"),
        ({"id": "cs_1", "metadata": "not a dict"}, "stripe:cs_1"),
        ({"id": "cs_" + "x" * 250}, "stripe:cs_" + "x" * 245),
        ({"id": "cs_1", "metadata": {"purchase_id": "9" * 250}}, "purchase:" + "9" * 200),
        ({"metadata": {}}, None),
    ],
)
def test_an_operation_is_about_its_purchase_or_else_its_stripe_object(sqlite_app, data_object, subject):
    body = build_event("checkout.session.completed", event_id="evt_subject")
    body["data"]["object"] = data_object

    stored = record(body)

    assert shop.operation(stored.operation_id).subject == subject


def test_marking_an_event_processed_stamps_the_time_and_any_other_state_clears_it(sqlite_app):
    record(event(id="evt_marked"))
    later = NOW + timedelta(minutes=5)

    intake.mark_event("evt_marked", "processed", now=later)
    db.session.commit()
    assert (shop.event("evt_marked").processing_state, shop.event("evt_marked").processed_at) == ("processed", later)
    intake.mark_event("evt_marked", "failed", now=later)
    db.session.commit()
    assert (shop.event("evt_marked").processing_state, shop.event("evt_marked").processed_at) == ("failed", None)


def test_rejections_are_counted_by_reason_with_the_last_time(sqlite_app):
    assert intake.rejection_counts() == {}

    intake.count_rejection(intake.STALE_TIMESTAMP, now=NOW)
    intake.count_rejection(intake.STALE_TIMESTAMP, now=NOW + timedelta(seconds=1))
    intake.count_rejection(intake.TOO_LARGE, now=NOW)

    assert intake.rejection_counts() == {intake.STALE_TIMESTAMP: 2, intake.TOO_LARGE: 1}
    assert last_rejected(intake.STALE_TIMESTAMP) == NOW + timedelta(seconds=1)


def test_a_rejection_counted_without_a_time_is_stamped_now(sqlite_app):
    before = utcnow()

    intake.count_rejection(intake.TOO_LARGE)

    assert before <= last_rejected(intake.TOO_LARGE) <= utcnow()


def test_a_rejection_that_cannot_be_counted_is_logged_not_raised(sqlite_app, monkeypatch, stripe_log):
    def unavailable(*args, **kwargs):
        raise OperationalError("INSERT INTO webhook_rejections", {}, Exception("database is locked"))

    with monkeypatch.context() as patch:
        patch.setattr(db.session, "execute", unavailable)
        intake.count_rejection(intake.INVALID_SIGNATURE, now=NOW)

    assert intake.rejection_counts() == {}
    [line] = stripe_log
    assert line.levelno == logging.WARNING and "invalid_signature" in line.getMessage()
