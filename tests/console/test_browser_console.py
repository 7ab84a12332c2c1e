"""The console an on-call admin can trust (issue 12), in a real headless Chromium.

Reuses test_browser's server, demo data and Chromium fixtures (one set for this module); no
worker runs here, so rows change state only when a test writes them, and nothing waits on time.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest

from tests.console.test_browser import (  # noqa: F401  (fixtures are used by name)
    EMAIL,
    PASSWORD,
    TIMEOUT_MS,
    browser,
    log_in,
    row,
    shot,
    site,
)
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationAttempt
from webapp.services.console.filters import Filters, count_matching

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def _login(browser, site, viewport):  # noqa: F811
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, site)
    return context, page


@pytest.fixture
def page(browser, site):  # noqa: F811
    """A logged-in page at 1440×900."""
    context, page = _login(browser, site, DESKTOP)
    yield page
    context.close()


@pytest.fixture
def phone(browser, site):  # noqa: F811
    """A logged-in page at 390×844."""
    context, page = _login(browser, site, PHONE)
    yield page
    context.close()


def _count(site, **filters) -> int:  # noqa: F811
    with site.app.app_context():
        total = count_matching(Filters(**filters))
        db.session.remove()
    return total


def _update(site, operation_id: int, **fields) -> None:  # noqa: F811
    """Change a row behind the page's back (as another tab or a worker would)."""
    with site.app.app_context():
        db.session.query(Operation).filter_by(id=operation_id).update(fields)
        db.session.commit()
        db.session.remove()


# --- 1. the URL is the only source of the filters ----------------------------------------


def test_back_restores_the_filter_bar_and_bulk_retry_follows_the_list(page, site):  # noqa: F811
    from playwright.sync_api import expect

    kind = page.locator("select[name=kind]")
    page.goto(site.url + "/admin/failed-operations")
    page.select_option("select[name=kind]", "email")
    expect(page).to_have_url(re.compile(r"kind=email"))
    expect(page.locator("tbody.op .tag", has_text="alert")).to_have_count(0)
    page.select_option("select[name=kind]", "alert")
    expect(page).to_have_url(re.compile(r"kind=alert"))
    expect(page.locator("tbody.op .tag", has_text="email")).to_have_count(0)

    page.go_back()
    expect(page).to_have_url(re.compile(r"kind=email"))
    expect(kind).to_have_value("email")  # the bar says what the list shows
    expect(page.locator("[data-chip=kind]")).to_contain_text("kind: email")
    expect(page.locator("tbody.op .tag", has_text="alert")).to_have_count(0)

    # "Retry everything matching" counts the rendered list's filters, whatever the bar says now.
    page.evaluate("document.querySelector('select[name=kind]').value = 'alert'")
    page.get_by_role("button", name="Retry everything matching…").click()
    confirm = page.locator("#bulk-panel .confirm")
    expect(confirm).to_contain_text("kind=email")
    total = _count(site, kind="email")
    expect(confirm).to_contain_text(f"Retry {total} operation")
    confirm.get_by_role("button", name="Cancel").click()

    # A chip removes its filter, and the bar follows.
    page.goto(site.url + "/admin/failed-operations?kind=email&q=example")
    page.locator("[data-chip=kind]").click()
    expect(page).to_have_url(re.compile(r"/admin/failed-operations\?q=example$"))
    expect(kind).to_have_value("")
    expect(page.locator("#q")).to_have_value("example")


def test_a_fingerprint_filter_shows_as_its_error_text(page, site):  # noqa: F811
    from playwright.sync_api import expect

    operation_id = site.dead(error="Mailbox full for user 4711")
    fingerprint = site.get(operation_id).error_fingerprint
    page.goto(site.url + f"/admin/failed-operations?fingerprint={fingerprint}")
    chip = page.locator("[data-chip=fingerprint]")
    expect(chip).to_contain_text("Mailbox full for user <n>")
    expect(chip).not_to_contain_text(fingerprint)
    chip.click()
    expect(page).to_have_url(re.compile(r"/admin/failed-operations$"))


# --- 2. a stale tab's action swaps in the row's true state, with one sentence ------------


def test_retry_from_a_stale_tab_shows_the_rows_true_state(page, site):  # noqa: F811
    from playwright.sync_api import expect

    operation_id = site.dead(error="SMTP timeout after 30s (stale tab)")
    stale = page.context.new_page()
    stale.goto(site.url + "/admin/failed-operations")
    page.goto(site.url + "/admin/failed-operations")
    row(page, operation_id).get_by_role("button", name="Retry").click()
    expect(row(page, operation_id).locator(".state")).to_have_text("pending")
    _update(site, operation_id, state="succeeded", succeeded_at=utcnow())  # a worker ran it

    target = row(stale, operation_id)
    expect(target.locator(".state")).to_have_text("dead")
    target.get_by_role("button", name="Retry").click()
    expect(target.locator(".state")).to_have_text("succeeded")
    expect(target.locator("[data-conflict]")).to_have_text(
        f"Not retried: operation {operation_id} is succeeded now (changed elsewhere); this row shows its current state."
    )
    expect(target.get_by_role("button", name="Retry")).to_have_count(0)
    expect(stale.locator("#toast")).to_be_hidden()


# --- 9. a succeeded row looks succeeded ----------------------------------------------------


def test_a_row_that_succeeded_after_retry_shows_no_old_error(page, site):  # noqa: F811
    from playwright.sync_api import expect

    operation_id = site.dead(error="Connection reset by peer (old)")
    page.goto(site.url + "/admin/failed-operations")
    target = row(page, operation_id)
    expect(target.locator("[data-when]")).to_have_text(re.compile(r"^died \d+m ago$"))
    target.get_by_role("button", name="Retry").click()
    expect(target.locator(".state")).to_have_text("pending")
    expect(target.locator(".error-text")).to_have_count(0)  # no longer failing: no red error
    _update(site, operation_id, state="succeeded", succeeded_at=utcnow())  # the worker's outcome
    expect(target.locator(".state")).to_have_text("succeeded")  # the live row polls every second
    expect(target.locator("[data-error]")).to_have_text("—")
    expect(target.locator("[data-when]")).to_have_text(re.compile(r"^succeeded \d+s ago$"))
    expect(target).not_to_contain_text("Connection reset by peer")


# --- 3. the health banner tells the truth and its links lead to the rows --------------------


def _retried_after_old_death(site) -> int:  # noqa: F811
    """An email that died 40 h ago, was requeued 3 minutes ago and then succeeded."""
    now = utcnow()
    operation_id = site.dead(
        kind="email",
        name="email.welcome",
        state="succeeded",
        attempts=4,
        max_attempts=4,
        created_at=now - timedelta(hours=41),
        dead_at=None,
        succeeded_at=now - timedelta(minutes=2),
    )
    with site.app.app_context():
        for number in (1, 2, 3, 4):
            old = now - timedelta(hours=41) + timedelta(minutes=number)
            started = old if number < 4 else now - timedelta(minutes=3)
            db.session.add(
                OperationAttempt(
                    operation_id=operation_id,
                    number=number,
                    started_at=started,
                    finished_at=started + timedelta(seconds=30) if number < 4 else now - timedelta(minutes=2),
                    duration_ms=1000,
                    outcome={3: "dead", 4: "succeeded"}.get(number, "failed"),
                )
            )
        db.session.commit()
        db.session.remove()
    return operation_id


def test_time_to_success_counts_from_the_latest_requeue_and_banner_links_lead_to_rows(page, site):  # noqa: F811
    from playwright.sync_api import expect

    recovered = _retried_after_old_death(site)
    stuck = site.dead(state="pending", dead_at=None, next_attempt_at=utcnow() - timedelta(hours=3))
    try:
        page.goto(site.url + "/admin/operations-health?window=1h")
        card = page.locator('[data-metric="avg_time_to_success"]')
        expect(card.locator(".value")).to_have_text(re.compile(r"^(\d+s|\d+m \d+s)$"))  # minutes, not 41 hours
        expect(card).not_to_have_attribute("data-status", "red")
        expect(card.locator(".threshold")).to_have_text("amber > 10m 0s, red > 30m 0s")  # formatted like the value

        banner = page.locator(".banner.critical")
        link = banner.get_by_role("link", name=re.compile("Oldest due operation"))
        expect(link).to_have_text(re.compile(r"^Oldest due operation \(3h 0m\)$"))  # not "10800.0s"
        expect(banner).not_to_contain_text("Avg time to success")
        link.click()
        expect(row(page, stuck)).to_be_visible()  # the row that made it red

        page.goto(site.url + "/admin/failed-operations?status=recovered&range=1h")
        expect(row(page, recovered)).to_be_visible()
    finally:
        _update(site, stuck, state="cancelled", cancelled_at=utcnow())


# --- 11. bulk "selected" actions: disabled until something is selected, confirmed with the count


def test_selected_actions_wait_for_a_selection_and_confirm_with_the_count(page, site):  # noqa: F811
    from playwright.sync_api import expect

    marker = f"selmark{utcnow():%H%M%S%f}"
    ids = [site.dead(error=f"Provider outage {marker} #{n}") for n in range(3)]
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    retry, resolve = (page.get_by_role("button", name=f"{verb} selected") for verb in ("Retry", "Resolve"))
    expect(retry).to_be_disabled()
    expect(resolve).to_be_disabled()
    row(page, ids[0]).locator("input[name=ids]").check()
    row(page, ids[1]).locator("input[name=ids]").check()
    expect(retry).to_be_enabled()
    expect(page.locator("#selected-count")).to_have_text("2 selected")

    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    retry.click()
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    assert questions == ["Retry the 2 selected operations?"]
    assert site.get(ids[0]).state == "dead"  # dismissed: nothing happened

    page.get_by_label("Note for resolving the selected operations").fill("handled in the provider's console")
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    resolve.click()
    expect(page.locator("#bulk-notice")).to_contain_text("Resolved 2 operations")
    assert questions[-1] == "Resolve the 2 selected operations?"
    expect(row(page, ids[2])).to_be_visible()
    expect(row(page, ids[0])).to_have_count(0)  # the list reloaded without the resolved rows
    expect(retry).to_be_disabled()


# --- 6. Issues: confirmations name the error and the count; notices survive the reload ------


def test_issue_group_actions_confirm_with_error_text_and_count(page, site):  # noqa: F811
    from playwright.sync_api import expect

    for tenant in (17, 4242):
        site.dead(error=f"Quota exhausted for tenant {tenant} in zone qz")
    text = "Quota exhausted for tenant <n> in zone qz"
    page.goto(site.url + "/admin/issues")
    issue = page.locator("tr", has_text=text)
    fingerprint = issue.get_attribute("id").removeprefix("issue-")

    issue.get_by_role("button", name="Retry group").click()
    confirm = page.locator("#bulk-panel .confirm")
    expect(confirm).to_contain_text(f'error "TransientError: {text}"')
    expect(confirm).to_contain_text("Retry 2 operations")
    expect(confirm).not_to_contain_text(fingerprint)
    confirm.get_by_role("button", name="Cancel").click()

    issue.locator("summary", has_text="Resolve group").click()
    issue.get_by_label("resolution note for this group").fill("quota raised")
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    issue.get_by_role("button", name="Resolve 2").click()
    notice = page.locator("main > p.notice")
    expect(notice).to_have_text(f"Resolved 2 operations failing with “TransientError: {text}”.")  # after the reload
    assert questions == [f"Resolve 2 unresolved operations failing with “{text}”?"]
    expect(page.locator("tr", has_text=text)).to_have_count(0)

    # "View" shows its filter as a chip in words, and the chip clears it.
    page.goto(site.url + "/admin/issues?status=resolved")
    page.locator("tr", has_text=text).get_by_role("link", name="View").click()
    chip = page.locator("[data-chip=fingerprint]")
    expect(chip).to_contain_text(text)
    chip.click()
    expect(page.locator("[data-chip=fingerprint]")).to_have_count(0)


# --- 5. pausing asks for a reason, shows who and since, and a held bulk job says why --------


def test_pause_needs_a_reason_and_a_held_bulk_job_explains_itself(page, site):  # noqa: F811

    from webapp.services.engine import pauses

    def paused() -> bool:
        with site.app.app_context():
            held = pauses.is_paused("admin.bulk_retry")
            db.session.remove()
        return held

    try:
        _pause_and_hold_a_bulk_job(page, site, paused)
    finally:
        with site.app.app_context():
            pauses.resume("admin.bulk_retry", "test")  # never leave the shared site paused
            db.session.remove()


def _pause_and_hold_a_bulk_job(page, site, paused) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page.goto(site.url + "/admin/operations-health")
    item = page.locator('[data-pause="admin.bulk_retry"]')
    item.locator("summary", has_text="Pause…").click()
    item.get_by_role("button", name="Pause admin.bulk_retry").click()  # no reason: the form refuses
    assert not paused()
    item.get_by_label("Reason for pausing admin.bulk_retry").fill("database migration until 05:00")
    item.get_by_role("button", name="Pause admin.bulk_retry").click()
    expect(item.locator(".state")).to_have_text("paused")
    expect(item.get_by_role("button", name="Resume")).to_be_focused()  # focus stays with the name
    expect(item.locator(".pause-who")).to_have_text(
        re.compile(rf"^by {EMAIL} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: “database migration until 05:00”$")
    )
    assert paused()

    marker = f"heldmark{utcnow():%H%M%S%f}"
    site.dead(error=f"Provider outage {marker}")
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    page.get_by_role("button", name="Retry everything matching…").click()
    page.get_by_role("button", name="Confirm retry of 1").click()
    job = page.locator("#bulk-panel .job")
    expect(job).to_have_attribute("data-job-state", "queued")
    expect(job.locator("[data-waiting]")).to_contain_text(f"admin.bulk_retry is paused (by {EMAIL} since ")
    job.get_by_role("button", name="Cancel job").click()
    expect(job).to_have_attribute("data-job-state", "cancelled")  # at once, not "queued (cancelling)"
    expect(job).not_to_contain_text("cancelling")

    page.goto(site.url + "/admin/operations-health")
    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_role("button", name="Resume").click()
    expect(item.locator(".state")).to_have_text("running")
    assert not paused()


# --- 10. times are labelled UTC, readable, and exported as ISO 8601 with Z ------------------


def test_times_are_labelled_utc_and_exported_with_z(page, site):  # noqa: F811
    from playwright.sync_api import expect

    marker = f"tzmark{utcnow():%H%M%S%f}"
    operation_id = site.dead(error=f"Provider outage {marker}")
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    page.locator("summary", has_text="From / to").click()  # folded until used
    expect(page.get_by_label("From (UTC)")).to_be_visible()
    expect(page.get_by_label("To (UTC)")).to_be_visible()
    readable = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
    when = row(page, operation_id).locator("[data-when] span")
    expect(when).to_have_attribute("title", re.compile(r"^dead-lettered \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    row(page, operation_id).get_by_role("button", name="Details").click()
    facts = page.locator(f"#details-{operation_id} .facts")
    expect(facts).to_contain_text(readable)
    expect(facts).not_to_contain_text(re.compile(r"\d\d:\d\d:\d\d\.\d+"))  # no microseconds

    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    record = next(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", record["dead_at"]), record["dead_at"]

    page.goto(site.url + "/admin/operations-health")
    expect(page.locator("h2", has_text="attempts per hour")).to_contain_text("UTC")


# --- 8. every htmx request shows that it is on its way and disables its button ---------------


def test_a_slow_request_shows_an_indicator_and_disables_its_button(page, site):  # noqa: F811
    from playwright.sync_api import expect

    operation_id = site.dead(error="Slow details please")
    held = []
    page.route(
        f"**/partials/operations/{operation_id}/details", lambda route: held.append(route)
    )  # answered when the test says
    page.goto(site.url + "/admin/failed-operations?q=Slow+details")
    button = row(page, operation_id).get_by_role("button", name="Details", exact=True)
    button.click()
    expect(button).to_be_disabled()
    expect(button).to_have_attribute("aria-busy", "true")
    expect(page.locator("body")).to_have_class(re.compile(r"\bbusy\b"))
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator(f"#details-{operation_id}")).to_contain_text("Idempotency key")
    expect(button).to_be_enabled()
    expect(button).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bbusy\b"))


# --- 4. the 10 s refresh keeps scroll and focus, and says how fresh it is -------------------


def test_health_refresh_keeps_scroll_and_focus(page, site):  # noqa: F811
    from playwright.sync_api import expect

    page.clock.install()
    page.goto(site.url + "/admin/operations-health?window=1h")
    page.evaluate("""() => {
        window.__status = 0;
        document.body.addEventListener("htmx:afterSettle", (event) => {
            if (event.detail.target.id !== "health-status") return;
            document.body.dataset.statusSwaps = String(++window.__status);
        });
    }""")
    body = page.locator("body")
    pauses = page.locator(".pauses")
    assert page.evaluate("(box => box.scrollHeight > box.clientHeight)(document.querySelector('.pauses'))")
    pauses.evaluate("box => { box.scrollTop = 60; }")
    page.clock.run_for(10_500)
    expect(body).to_have_attribute("data-status-swaps", "1")
    assert pauses.evaluate("box => box.scrollTop") == 60  # the refresh kept the list where it was
    expect(page.locator("#updated-ago")).to_have_text("updated 0 s ago")
    page.clock.run_for(4_000)
    expect(page.locator("#updated-ago")).to_have_text(re.compile(r"^updated [34] s ago$"))

    summary = page.locator('[data-pause="admin.bulk_retry"] summary')
    summary.focus()
    page.clock.run_for(10_500)  # a poll is due, but focus is inside the panel: it waits
    expect(summary).to_be_focused()
    page.locator("h1").click()  # focus leaves: the next round refreshes it
    page.clock.run_for(10_500)
    expect(body).to_have_attribute("data-status-swaps", "2")


# --- 14. polish: "—" for nothing finished, stat cards are links, a "today" range ----------


def test_polish_dash_for_nothing_finished_stat_links_and_today(page, site):  # noqa: F811
    from playwright.sync_api import expect

    now = utcnow()
    site.dead(name="test.only_scheduled", state="scheduled", dead_at=None, next_attempt_at=now + timedelta(hours=2))
    marker = f"todaymark{now:%H%M%S%f}"
    today = site.dead(error=f"outage {marker}", dead_at=now)
    earlier = site.dead(error=f"outage {marker}", dead_at=now - timedelta(days=2))

    page.goto(site.url + "/admin/operations-health?window=1h")
    scheduled_only = page.locator("#health-breakdown tr", has_text="test.only_scheduled")
    expect(scheduled_only.locator("td").nth(6)).to_have_text("—")  # the Success column

    page.goto(site.url + "/admin/failed-operations")
    page.locator("a.card.stat", has=page.locator('[data-stat="email"]')).click()
    expect(page).to_have_url(re.compile(r"kind=email&status=all$"))
    expect(page.locator("select[name=kind]")).to_have_value("email")

    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    expect(row(page, earlier)).to_be_visible()
    page.select_option("select[name=range]", "today")
    expect(row(page, earlier)).to_have_count(0)
    expect(row(page, today)).to_be_visible()
    expect(page.locator("[data-chip=range]")).to_contain_text("range: today")


# --- 13. the resolve form fits the table, has room for a note, and the note is shown ---------


def test_resolve_form_fits_and_the_saved_note_is_visible(page, site):  # noqa: F811
    from playwright.sync_api import expect

    marker = f"resmark{utcnow():%H%M%S%f}"
    operation_id = site.dead(error=f"Card declined {marker}")
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    target = row(page, operation_id)
    target.locator("summary", has_text="Resolve").click()
    note = target.locator("input[name=note]")
    expect(note).to_be_visible()
    table, form = page.locator("table.ops").bounding_box(), target.locator("form").bounding_box()
    assert table["x"] <= form["x"] and form["x"] + form["width"] <= table["x"] + table["width"] + 0.5
    assert note.bounding_box()["width"] >= 300
    target.get_by_label(f"Resolution note for operation {operation_id}").fill("refunded by hand, ticket 4411")
    target.get_by_role("button", name="Resolve", exact=True).click()
    expect(target.locator("[data-note]")).to_have_text("“refunded by hand, ticket 4411”")
    expect(target.locator("[data-note]")).to_be_visible()


# --- 7. usable on a phone (390×844): nothing off-screen, every action reachable -------------


def _page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def _on_screen(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"] + 0.5


def test_phone_layout_keeps_every_action_reachable(phone, site):  # noqa: F811
    from playwright.sync_api import expect

    marker = f"phonemark{utcnow():%H%M%S%f}"
    operation_id = site.dead(error=f"Gateway timeout {marker}")
    phone.goto(site.url + "/admin/failed-operations")
    assert _page_width(phone) <= 390
    assert _on_screen(phone, phone.get_by_role("button", name="Log out"))
    stats = phone.locator("#stats").bounding_box()
    assert stats["height"] <= 260, stats  # seven cards, compact, before the list

    phone.goto(site.url + f"/admin/failed-operations?q={marker}")
    assert _page_width(phone) <= 390
    retry = row(phone, operation_id).get_by_role("button", name="Retry")
    retry.scroll_into_view_if_needed()
    assert _on_screen(phone, retry)
    details = row(phone, operation_id).get_by_role("button", name="Details", exact=True)
    details.scroll_into_view_if_needed()
    details.click()
    facts = phone.locator(f"#details-{operation_id} .facts")
    expect(facts).to_be_visible()
    assert _on_screen(phone, facts)
    assert _page_width(phone) <= 390
    shot(phone, "failed-operations-phone")

    phone.goto(site.url + "/admin/operations-health")
    expect(phone.locator('[data-metric="dlq_unresolved"]')).to_be_visible()
    assert _page_width(phone) <= 390
    pause = phone.locator('[data-pause="admin.bulk_retry"] summary')
    pause.scroll_into_view_if_needed()
    assert _on_screen(phone, pause)
    shot(phone, "operations-health-phone")


# --- 12. accessibility: axe-core on every page, focus kept, skip link, labels ---------------

AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def _serious_violations(page) -> list[str]:
    """axe-core (npm, static/package.json) run in the page: serious and critical WCAG 2.1 AA findings."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(url="/static/node_modules/axe-core/axe.min.js")  # same origin: fine under a CSP
    return page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, {runOnly: {type: "tag", values: tags}});
            return result.violations
                .filter((v) => v.impact === "serious" || v.impact === "critical")
                .map((v) => v.id + ": " + v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", "));
        }""",
        AXE_TAGS,
    )


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_passes_axe(browser, site, viewport):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(site.url + "/admin/login")
        assert _serious_violations(page) == [], "login"
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/operations-health")
        expect(page.locator('[data-metric="dlq_unresolved"]')).to_be_visible()
        assert _serious_violations(page) == [], "operations health"
        page.goto(site.url + "/admin/failed-operations")
        first = page.locator("tbody.op").first
        first.get_by_role("button", name="Details", exact=True).click()
        expect(first.locator(".details")).to_be_visible()
        assert _serious_violations(page) == [], "failed operations with details"
        page.goto(site.url + "/admin/issues")
        assert _serious_violations(page) == [], "issues"
    finally:
        context.close()


def _tabs_until_focused(page, locator, limit: int = 80, reload: bool = True) -> int:
    """Tab presses from a fresh load of the page (or from the focus now) until ``locator`` has the focus."""
    if reload:
        page.reload(wait_until="networkidle")
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if locator.evaluate("element => element === document.activeElement"):
            return presses
    raise AssertionError(f"not focused after {limit} Tab presses")


def _focus_order(page, count: int) -> list[str]:
    """What the first ``count`` Tab presses from a fresh load focus, for a failure message."""
    page.reload(wait_until="networkidle")
    seen = []
    for _ in range(count):
        page.keyboard.press("Tab")
        seen.append(
            page.evaluate(
                "(e => e.tagName + ' ' + (e.getAttribute('name') || e.textContent.trim()))(document.activeElement)"
            )
        )
    return seen


def test_keyboard_skip_link_and_focus_stays_where_the_action_was(page, site):  # noqa: F811
    from playwright.sync_api import expect

    # A subject that links nowhere: a purchase:<digits> subject would add a link (a Tab stop) to the row.
    operation_id = site.dead(error="Keyboard user was here", subject="keyboard-test")
    page.goto(site.url + "/admin/failed-operations?q=Keyboard+user")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()

    target = row(page, operation_id)
    # 36 Tab presses before, 14 of them in the two date fields (seven stops each); folded behind
    # "From / to" they take one. The rest are the header, the seven stat-card links, the filters
    # and the bulk toolbar: "Skip to results" passes them all.
    details = target.get_by_role("button", name="Details", exact=True)
    stops = _focus_order(page, _tabs_until_focused(page, details))
    assert stops.count("SUMMARY From / to") == 1, stops
    assert not [stop for stop in stops if stop.startswith(("INPUT since", "INPUT until"))], stops
    page.reload(wait_until="networkidle")  # no htmx swap may move the focus mid-walk
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to results")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#ops-list")).to_be_focused()
    # Then the list's filter chips and export links, its scroll region, the row's checkbox.
    assert _tabs_until_focused(page, details, limit=6, reload=False) <= 6

    target.get_by_role("button", name="Details", exact=True).click()
    target.get_by_role("button", name="Hide details").click()
    expect(target.get_by_role("button", name="Details", exact=True)).to_be_focused()  # not the page body

    target.locator("summary", has_text="Resolve").click()
    target.locator("input[name=note]").fill("by keyboard")
    target.locator("input[name=note]").press("Enter")
    expect(target.locator("[data-note]")).to_be_visible()
    expect(target.locator(".state")).to_be_focused()  # the swapped row's state, not the body
