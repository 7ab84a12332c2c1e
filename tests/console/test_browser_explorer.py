"""The operations explorer in a real headless Chromium: "the customer says no email came" (issue 11).

Reuses test_browser's server, demo data and Chromium fixtures (one set for this module). The
purchase is completed the real way: a Stripe event stored by the intake, its handler run, and
the confirmation email sent over SMTP to a real (aiosmtpd) server.
"""

from __future__ import annotations

import re

import pytest

from tests.console.test_browser import (  # noqa: F401  (fixtures are used by name)
    EMAIL,
    PASSWORD,
    TIMEOUT_MS,
    browser,
    log_in,
    shot,
    site,
)
from tests.console.test_browser_console import _serious_violations
from tests.support import shop
from tests.support import stripe_signing as signing
from tests.support.smtp import SmtpServer
from webapp.extensions import db
from webapp.services.engine import runner
from webapp.services.payments import intake

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

CUSTOMER = "grace.hopper@example.com"


@pytest.fixture(scope="module")
def smtp():
    """A real SMTP server the site's email provider sends to."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sent_confirmation(site, smtp):  # noqa: F811
    """A checkout completed by its Stripe event, and the confirmation email it caused, sent."""
    site.app.config.update(EMAIL_PROVIDERS=("smtp",), SMTP_URL=smtp.url)
    with site.app.app_context():
        customer = shop.add_customer(CUSTOMER, "Grace Hopper")
        purchase = shop.add_purchase(customer, shop.add_product(sku="lead-explorer", name="Lead: Explorer Inc"))
        event = shop.event_for("checkout.session.completed", purchase)
        stored = intake.record_event(signing.body_of(event), event)
        assert runner.execute(stored.operation_id).outcome == "succeeded"
        [email] = shop.email_operations(purchase.id)
        assert runner.execute(email.id).outcome == "succeeded"
        message_id = shop.operation(email.id).result["message_id"]
        db.session.remove()
    assert len(smtp.received()) == 1
    return {"email_id": email.id, "event_id": event["id"], "message_id": message_id}


def test_customer_says_no_email_found_from_their_address_alone(browser, site, sent_confirmation):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, site)

    # All the admin has is the customer's address.
    page.get_by_role("link", name="Operations", exact=True).click()
    page.wait_for_url("**/admin/operations")
    page.fill("#explorer-q", CUSTOMER)
    page.select_option("select[name=state]", "succeeded")
    email_row = page.locator(f'tr.explorer-row[data-operation="{sent_confirmation["email_id"]}"]')
    expect(email_row).to_contain_text("email.lead_purchase_confirmation")
    expect(email_row).to_contain_text(sent_confirmation["message_id"])
    expect(page.locator("[data-searched-as]")).to_contain_text("a customer's email or name")
    assert "q=grace.hopper%40example.com" in page.url and "state=succeeded" in page.url  # kept in the URL
    shot(page, "operations-explorer")
    assert _serious_violations(page) == [], "operations explorer"

    email_row.get_by_role("link", name=f"#{sent_confirmation['email_id']}").click()
    page.wait_for_url(f"**/admin/operations/{sent_confirmation['email_id']}")
    timeline = page.locator("#timeline")
    expect(timeline.locator('[data-kind="attempt"]')).to_have_count(1)
    expect(timeline.locator('[data-kind="attempt"]')).to_contain_text(re.compile(r"succeeded\s+\d+ ms"))
    expect(page.locator("#operation-result")).to_contain_text(sent_confirmation["message_id"])
    expect(page.locator("#operation-result")).to_contain_text('"provider": "smtp"')
    expect(page.locator("#stripe-events")).to_contain_text(sent_confirmation["event_id"])
    expect(page.locator("#email-log")).to_contain_text(sent_confirmation["message_id"])
    shot(page, "operation-permalink")
    assert _serious_violations(page) == [], "operation permalink"
    context.close()
