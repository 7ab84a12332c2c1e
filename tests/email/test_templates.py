"""Every email template renders a subject, a text part and an autoescaped HTML part."""

from __future__ import annotations

import pytest

from webapp.services.email import TEMPLATES
from webapp.services.email.render import money, render_email

HOSTILE = '<script>alert("x")</script> & Co'

CONTEXTS = {
    "lead_purchase_confirmation": (
        {"customer_name": "Ada", "product_name": "Lead: Acme", "amount_cents": 4900, "currency": "usd"},
        ["Lead: Acme", "$49.00", "#12"],
    ),
    "credit_purchase_confirmation": (
        {
            "customer_name": "Ada",
            "product_name": "100 credits",
            "credits": 100,
            "amount_cents": 1999,
            "currency": "eur",
        },
        ["100 credits", "€19.99"],
    ),
    "refund_notification": (
        {"customer_name": "Ada", "refunded_cents": 2500, "currency": "usd", "reason": "requested by customer"},
        ["$25.00", "requested by customer"],
    ),
    "payment_failed": (
        {
            "customer_name": "Ada",
            "product_name": "Lead: Acme",
            "reason": "card declined",
            "retry_url": "https://shop.example/retry/12",
        },
        ["card declined", "https://shop.example/retry/12"],
    ),
    "welcome": ({"customer_name": "Ada", "dashboard_url": "https://shop.example/app"}, ["https://shop.example/app"]),
}


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_renders_all_parts(sqlite_app, template):
    context, expected = CONTEXTS[template]

    email = render_email(template, context, to="ada@example.com", purchase_id=12)

    assert email.subject and "\n" not in email.subject
    for text in expected:
        assert text in email.text and text in email.html
    assert "Ada" in email.text
    assert email.html.lstrip().startswith("<!doctype html>") and "ada@example.com" in email.html


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_renders_with_an_empty_context(sqlite_app, template):
    email = render_email(template, {}, to="ada@example.com")

    assert email.subject and email.text.strip() and "None" not in email.text + email.subject


def test_html_is_escaped_and_text_is_not(sqlite_app):
    email = render_email(
        "lead_purchase_confirmation",
        {"customer_name": HOSTILE, "product_name": HOSTILE},
        to="ada@example.com",
        purchase_id=1,
    )

    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in email.html
    assert HOSTILE in email.text


def test_subject_cannot_carry_a_header_break(sqlite_app):
    email = render_email("welcome", {"customer_name": "Ada\r\nBcc: victim@example.com"}, to="ada@example.com")

    assert email.subject == "Welcome, Ada Bcc: victim@example.com!"


def test_money():
    assert money(4900, "usd") == "$49.00"
    assert money(123456, "gbp") == "£1,234.56"
    assert money(500, "chf") == "5.00 CHF"
    assert money(None, "usd") == ""


def test_payments_context_names_are_understood(sqlite_app):
    base = {
        "purchase_id": 7,
        "customer_name": "Ada",
        "product_name": "Pack",
        "amount_cents": 10000,
        "currency": "usd",
        "amount": "$100.00",
    }

    refund = render_email(
        "refund_notification",
        {**base, "refunded_amount": "$40.00", "refunded_cents": 4000, "fully_refunded": "no"},
        to="ada@example.com",
        purchase_id=7,
    )
    failed = render_email("payment_failed", {**base, "failure_reason": "card declined"}, to="ada@example.com")
    credits = render_email("credit_purchase_confirmation", {**base, "credits_granted": 500}, to="ada@example.com")

    assert "We have refunded $40.00" in refund.text and "$100.00" not in refund.text
    assert refund.subject.startswith("A partial refund")
    assert "Reason: card declined" in failed.text and "card declined" in failed.html
    assert "Credits added: 500" in credits.text and credits.subject.startswith("500 credits")
