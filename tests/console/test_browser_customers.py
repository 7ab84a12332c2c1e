"""The Stripe event log and the customer page in a real headless Chromium (issue 11, items 3 and 4).

Reuses test_browser's server, demo data and Chromium fixtures; no worker runs here, so a
replay's operation stays pending, which is what the page must show.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.console.test_browser import (  # noqa: F401  (fixtures are used by name)
    EMAIL,
    browser,
    page,
    shot,
    site,
)
from tests.console.test_browser_console import _serious_violations
from webapp.extensions import db
from webapp.models import Customer, Operation, Product, Purchase, StripeEvent

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


def _processed_checkout(site) -> tuple[str, int]:  # noqa: F811
    """A demo checkout event whose processing succeeded, and its customer's id."""
    with site.app.app_context():
        row = db.session.execute(
            select(StripeEvent.id, Purchase.customer_id)
            .join(Operation, Operation.id == StripeEvent.operation_id)
            .join(Purchase, Purchase.stripe_checkout_session_id == StripeEvent.object_id)
            .where(StripeEvent.type == "checkout.session.completed", Operation.state == "succeeded")
            .order_by(StripeEvent.received_at.desc())
            .limit(1)
        ).one()
        db.session.remove()
    return row.id, row.customer_id


def test_replay_an_event_from_its_details_page(page, site):  # noqa: F811
    from playwright.sync_api import expect

    event_id, customer_id = _processed_checkout(site)
    page.goto(site.url + "/admin/stripe-events")
    expect(page.locator("tr.event").first).to_be_visible()
    shot(page, "stripe-events")
    assert _serious_violations(page) == [], "stripe events"

    page.locator("#event-q").fill(event_id)
    expect(page).to_have_url(re.compile(f"q={event_id}"))
    expect(page.locator("tr.event")).to_have_count(1)
    page.get_by_role("link", name=event_id).click()
    expect(page.locator("h1")).to_have_text(event_id)
    expect(page.locator("[data-event-body]")).to_contain_text('"type": "checkout.session.completed"')
    assert _serious_violations(page) == [], "stripe event"

    questions = []

    def accept(dialog):
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Replay event").click()
    expect(page.locator("[data-replayed]")).to_contain_text("Replay 1 queued as operation #")
    assert questions and event_id in questions[0]
    new_row = page.locator("#event-operations tr.new")
    expect(new_row).to_contain_text(f"replay 1 by {EMAIL}")
    expect(new_row).to_contain_text("pending")
    operation_id = int(new_row.get_attribute("data-operation-id"))
    assert site.get(operation_id).idempotency_key == f"stripe-replay:{event_id}:1"

    # The customer's page shows the event and both of its operations on one timeline.
    page.goto(site.url + f"/admin/customers/{customer_id}")
    timeline = page.locator("ol.timeline")
    expect(timeline.locator(f"a[href='/admin/stripe-events/{event_id}']")).to_be_visible()
    expect(timeline.locator(f"a[href='/admin/operations/{operation_id}']")).to_be_visible()

    # The customer's purchases link to their pages.
    page.locator("table.purchases a").first.click()
    expect(page.locator("h1")).to_contain_text("Purchase #")
    assert _serious_violations(page) == [], "purchase"


def test_customer_search_and_page(page, site):  # noqa: F811
    from playwright.sync_api import expect

    with site.app.app_context():
        customer = db.session.execute(
            select(Customer).join(Purchase, Purchase.customer_id == Customer.id).order_by(Customer.id).limit(1)
        ).scalar_one()
        email, name, customer_id = customer.email, customer.name, customer.id
        db.session.remove()
    page.goto(site.url + "/admin/customers")
    page.locator("#customer-q").fill(name.split()[0].upper())
    expect(page).to_have_url(re.compile(r"q="))
    expect(page.locator(f"tr.customer[data-customer-id='{customer_id}']")).to_be_visible()
    assert _serious_violations(page) == [], "customers"
    page.get_by_role("link", name=email).click()
    expect(page.locator("h1")).to_contain_text(name)
    expect(page.locator("ol.timeline li.entry").first).to_be_visible()
    expect(page.locator("table.stats")).to_be_visible()
    shot(page, "customer")
    assert _serious_violations(page) == [], "customer"


def test_a_demo_credit_pack_shows_its_dollars_in_the_balance_and_history(page, site):  # noqa: F811
    """Issue 12, item 15: the "$100 credit pack" grants 10,000 credit cents, not 100."""
    from playwright.sync_api import expect

    with site.app.app_context():
        customer_id, price_cents = db.session.execute(
            select(Purchase.customer_id, Product.price_cents)
            .join(Product, Product.id == Purchase.product_id)
            .where(Product.sku == "credits-100", Purchase.status == "completed")
            .limit(1)
        ).one()
        balance = db.session.get(Customer, customer_id).credit_balance_cents
        db.session.remove()
    page.goto(site.url + f"/admin/customers/{customer_id}")
    expect(page.locator("[data-balance]")).to_contain_text(f"{balance / 100:.2f} in credits ({balance} credit cents)")
    grant = page.locator("table.credits tr", has_text="credit pack bought").first
    expect(grant.locator("td").nth(1)).to_have_text("+10000")  # the $90 pack grants $100, not 100 cents
    assert price_cents == 9000
