"""Waiting work and the audit log in a real headless Chromium: run a scheduled operation now and
reschedule another from their rows, then find both actions (and the log-in) on /admin/audit.

Reuses test_browser's server, demo data and Chromium fixtures; no worker runs here, so a row run
now stays pending (due) and nothing waits on time.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from tests.console.test_browser import (  # noqa: F401  (fixtures are used by name)
    EMAIL,
    browser,
    page,
    row,
    shot,
    site,
)
from tests.console.test_browser_console import _serious_violations
from webapp.domain.time import utcnow

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


def _scheduled(site, hours: int) -> tuple[int, str]:  # noqa: F811
    """A scheduled operation due in ``hours``; returns its id and its idempotency key (to search by)."""
    later = utcnow().replace(microsecond=0) + timedelta(hours=hours)
    key = f"browser-waiting-{os.urandom(4).hex()}"
    operation_id = site.dead(
        state="scheduled",
        idempotency_key=key,
        run_at=later,
        next_attempt_at=later,
        dead_at=None,
        error_class=None,
        error_kind=None,
        error_message=None,
        error_stack=None,
    )
    return operation_id, key


def test_run_now_and_reschedule_from_the_row_then_see_them_in_the_audit_log(page, site):  # noqa: F811
    from playwright.sync_api import expect

    page.on("dialog", lambda dialog: dialog.accept())  # the hx-confirm questions
    first, key = _scheduled(site, hours=6)
    page.goto(f"{site.url}/admin/failed-operations?status=scheduled&q={key}")
    row(page, first).get_by_role("button", name="Run now").click()
    expect(row(page, first).locator("[data-state]")).to_have_attribute("data-state", "pending")
    assert site.get(first).next_attempt_at <= utcnow()

    second, key = _scheduled(site, hours=2)
    page.goto(f"{site.url}/admin/failed-operations?status=scheduled&q={key}")
    target = (utcnow() + timedelta(days=2)).replace(second=0, microsecond=0)
    row(page, second).locator("summary", has_text="Reschedule").click()
    row(page, second).locator("input[name=run_at]").fill(target.strftime("%Y-%m-%dT%H:%M"))
    row(page, second).locator("form.reschedule-form button[type=submit]").click()
    expect(row(page, second).locator("[data-when]")).to_contain_text("due in 1d")
    assert site.get(second).next_attempt_at == target

    page.get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/admin/audit")
    ran = page.locator('tr[data-action="operation.run_now"]', has_text=f"operation:{first}")
    expect(ran).to_contain_text(EMAIL)
    expect(ran).to_contain_text("127.0.0.1")
    expect(page.locator('tr[data-action="operation.reschedule"]', has_text=f"operation:{second}")).to_contain_text(
        target.strftime("%Y-%m-%dT%H:%M")
    )
    expect(page.locator('tr[data-action="login"]').first).to_contain_text(EMAIL)
    assert _serious_violations(page) == [], "audit log"
    shot(page, "audit-log")

    # The action filter is kept in the URL and narrows the list in place.
    page.locator("select[name=action]").select_option("operation.run_now")
    page.wait_for_url("**/admin/audit?action=operation.run_now*")
    expect(page.locator('tr[data-action="login"]')).to_have_count(0)
    expect(page.locator('tr[data-action="operation.run_now"]')).to_have_count(1)
