"""Outside text the database can store, and the Stripe ids intake trusts (pure rules, no database)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from webapp.domain import stripe_ids
from webapp.domain.text import find_lone_surrogate, storable, text_problem


def test_nul_and_lone_surrogates_are_named_and_paired_surrogates_are_fine():
    assert text_problem("a\x00b") == "holds a NUL character"
    assert text_problem("\ud800") == text_problem("x\udfff") == "holds a lone surrogate (not valid Unicode)"
    assert text_problem("😀 é \u202e") is None


def test_the_path_of_the_first_lone_surrogate_is_found_at_any_depth_without_recursion():
    assert find_lone_surrogate({"filters": {"q": "ok", "name": "\ud800"}}) == "filters.name"
    assert find_lone_surrogate({"items": [1, "x", ["\udc00"]]}) == "items[2][0]"
    assert find_lone_surrogate({"\ud800": 1}) == "\\ud800"
    deep: list = ["\ud800"]
    for _ in range(50_000):
        deep = [deep]
    assert find_lone_surrogate({"a": deep}).startswith("a[0][0]")
    assert find_lone_surrogate({"a": ["😀", {"b": None}]}) is None


@given(st.text())
def test_storable_text_has_no_problem_and_keeps_its_length(text):
    assert text_problem(storable(text)) is None
    assert len(storable(text)) == len(text)


def test_stripe_ids_are_short_printable_ascii():
    assert stripe_ids.is_stripe_id("pi_3PqXyZ2eZvKYlo2C1a2b3c4d")
    for bad in ("", "pi_\ud800", "pi_\x00", "pi_é", "pi 1", "x" * 256, None, 7):
        assert not stripe_ids.is_stripe_id(bad), bad


def test_an_event_is_refused_for_any_bad_id_or_reference_but_not_for_merchant_metadata():
    event = {
        "id": "evt_1",
        "data": {"object": {"id": "ch_1", "payment_intent": {"id": "pi_1"}, "metadata": {"id": "a b"}}},
    }
    assert stripe_ids.event_problem(event) is None
    event["data"]["object"]["payment_intent"]["id"] = "pi_\x00"
    assert stripe_ids.event_problem(event).startswith("data.object.payment_intent.id is not a Stripe id")
    assert stripe_ids.event_problem({"id": "evt_1", "data": {"object": {"charge": "ch 1"}}}).startswith(
        "data.object.charge"
    )
    assert "lone surrogate" in stripe_ids.event_problem({"id": "evt_1", "note": ["\ud800"]})
