"""The admin console in a real headless Chromium (Debian's), against a real server and worker.

Each flow can save a screenshot of its page to docs/screenshots/ (the README shows them):
``BACKSTOP_SCREENSHOTS=1 .venv/bin/pytest tests/console`` writes them again.
"""

from __future__ import annotations

import os
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import _sqlite_backend, make_app
from tests.support import servers
from tests.support.polling import wait_for
from webapp.devdata import demo
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console import admins
from webapp.services.engine import operations

# One worker runs the module: its server, demo data and Chromium are set up once.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
EMAIL, PASSWORD = "admin@example.com", "correct horse battery"
TIMEOUT_MS = 20_000


def _require_chromium() -> None:
    servers.require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install -y chromium)")


class Site:
    """The app served by werkzeug in a thread, plus helpers to put rows in its database."""

    def __init__(self, backend):
        from werkzeug.serving import make_server

        self.backend = backend
        self.app = make_app(backend)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        with self.app.app_context():
            admins.create_admin(EMAIL, PASSWORD)
            demo.fill()  # a lived-in week behind the flows (and in the screenshots)

    def dead(self, name="test.succeed", kind="job", error="SMTP timeout after 30s", **fields) -> int:
        """Insert a dead-lettered operation directly; return its id."""
        now = utcnow()
        with self.app.app_context():
            values = dict(
                kind=kind,
                name=name,
                payload={"to": "grace@example.com"},
                idempotency_key=f"browser-{os.urandom(6).hex()}",
                subject=f"purchase:{os.urandom(2).hex()}",
                state="dead",
                attempts=3,
                max_attempts=3,
                next_attempt_at=now,
                created_at=now - timedelta(minutes=2),
                updated_at=now,
                dead_at=now - timedelta(minutes=1),
                error_class="TransientError",
                error_kind="transient",
                error_message=error,
                error_stack="Traceback ...",
            )
            values.update(fields)
            operation = Operation(**values)
            db.session.add(operation)
            db.session.commit()
            operation_id = operation.id
            db.session.remove()
        return operation_id

    def create(self, name: str, **payload) -> int:
        """Create an operation the normal way (the worker is rung after commit)."""
        with self.app.app_context():
            operation = operations.create_operation(name, payload, idempotency_key=f"browser-{os.urandom(6).hex()}")
            db.session.commit()
            operation_id = operation.id
            db.session.remove()
        return operation_id

    def get(self, operation_id: int) -> Operation:
        """A detached copy of an operation."""
        with self.app.app_context():
            operation = db.session.get(Operation, operation_id)
            db.session.expunge(operation)
            db.session.remove()
        return operation

    def stop(self) -> None:
        """Stop serving and close the database."""
        self.server.shutdown()
        with self.app.app_context():
            db.engine.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One server for the module (on its own SQLite files)."""
    _require_chromium()
    site = Site(_sqlite_backend(tmp_path_factory.mktemp("browser")))
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser(site):
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page, site) -> None:
    """Sign in through the login form as the site's admin; the console opens on the health page."""
    page.goto(site.url + "/admin/login")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/operations-health")


@pytest.fixture
def page(browser, site):
    """A logged-in page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, site)
    yield page
    context.close()


def shot(page, name: str) -> None:
    """Save a full-page screenshot for the README when asked to (``BACKSTOP_SCREENSHOTS=1``).

    Not on every run: a test run must not rewrite tracked files."""
    if os.environ.get("BACKSTOP_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def row(page, operation_id: int):
    """The locator of an operation's row group."""
    return page.locator(f"#op-{operation_id}")


def test_login_page_and_wrong_password(browser, site):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 800})
    page = context.new_page()
    page.goto(site.url + "/admin/failed-operations")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=/admin/failed-operations"))
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Wrong email or password")
    shot(page, "login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/admin/failed-operations$"))
    context.close()


def test_filter_details_and_script_shown_as_text(page, site):
    from playwright.sync_api import expect

    webhook = site.dead(name="stripe.checkout.session.completed", kind="webhook", error="Database connection timeout")
    email = site.dead(name="email.welcome", kind="email", error="<script>window.__xss = 1</script>550 rejected")
    page.goto(site.url + "/admin/failed-operations")
    expect(row(page, webhook)).to_be_visible()
    expect(row(page, email)).to_be_visible()
    # The error text is shown literally and never runs.
    expect(row(page, email).locator(".error-text")).to_contain_text("<script>window.__xss = 1</script>")
    assert page.evaluate("window.__xss") is None

    page.select_option("select[name=kind]", "webhook")
    expect(row(page, email)).to_have_count(0)
    expect(row(page, webhook)).to_be_visible()
    expect(page).to_have_url(re.compile(r"kind=webhook"))  # filters live in the URL (hx-push-url)

    page.select_option("select[name=kind]", "")
    page.fill("#q", "connection timeout")
    expect(row(page, email)).to_have_count(0)
    expect(page).to_have_url(re.compile(r"q=connection"))

    row(page, webhook).get_by_role("button", name="Details").click()
    details = page.locator(f"#details-{webhook}")
    expect(details).to_contain_text("Idempotency key")
    expect(details.locator("pre.json")).to_contain_text('"to": "grace@example.com"')
    expect(details).to_contain_text("Stack trace")
    page.reload()  # a bookmarked filter URL renders the same list
    expect(row(page, webhook)).to_be_visible()
    expect(page.locator("#q")).to_have_value("connection timeout")
    page.fill("#q", "")
    page.select_option("select[name=status]", "all")
    expect(row(page, email)).to_be_visible()
    # A demo purchase email: its attempts, purchase, customer and email log, in place.
    demo_row = page.locator("tbody.op", has_text="email.credit_purchase_confirmation").first
    demo_row.get_by_role("button", name="Details").click()
    details = demo_row.locator(".details")
    expect(details.locator("table.compact").first).to_contain_text("dead")
    expect(details).to_contain_text("USD")
    expect(details).to_contain_text("@example.com>")
    expect(details.locator("table.compact").last).to_contain_text("smtp")
    shot(page, "failed-operations")


def test_retry_row_goes_live_and_succeeds_with_a_worker(page, site, start_worker):
    from playwright.sync_api import expect

    # test.flaky fails its first three attempts: attempt four, after the admin's retry, succeeds.
    operation_id = site.dead(name="test.flaky", payload={"fail_times": 3}, error="flaky failure on attempt 3")
    start_worker(site.backend)
    page.goto(site.url + "/admin/failed-operations")
    target = row(page, operation_id)
    expect(target.locator(".state")).to_have_text("dead")
    target.get_by_role("button", name="Retry").click()
    # The row is swapped in place and polls its live state until it is terminal.
    expect(target.locator(".state")).to_have_text(re.compile("pending|running|retrying|succeeded"))
    expect(target.locator(".state")).to_have_text("succeeded", timeout=30_000)
    expect(target.locator(".spinner")).to_have_count(0)
    stored = site.get(operation_id)
    assert stored.state == "succeeded" and stored.attempts == 4


def test_resolve_with_a_note(page, site):
    from playwright.sync_api import expect

    operation_id = site.dead(error="No purchase matches checkout session cs_test_123")
    page.goto(site.url + "/admin/failed-operations")
    target = row(page, operation_id)
    target.locator("summary", has_text="Resolve").click()
    target.locator("input[name=note]").fill("customer refunded by hand")
    target.get_by_role("button", name="Resolve").click()
    expect(target).to_contain_text(f"resolved by {EMAIL}")
    stored = site.get(operation_id)
    assert stored.resolution_note == "customer refunded by hand" and stored.resolved_by == EMAIL


def test_bulk_retry_everything_matching_with_confirmation(page, site, start_worker):
    from playwright.sync_api import expect

    marker = f"bulkmark{os.urandom(3).hex()}"
    ids = [site.dead(error=f"Provider outage {marker} #{n}") for n in range(3)]
    start_worker(site.backend)
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    for operation_id in ids:
        expect(row(page, operation_id)).to_be_visible()
    page.get_by_role("button", name="Retry everything matching…").click()
    confirm = page.locator("#bulk-panel .confirm")
    expect(confirm).to_contain_text("Retry 3 operations")
    shot(page, "bulk-retry-confirmation")
    late = site.dead(error=f"Provider outage {marker} late")  # arrives after the count was shown
    confirm.get_by_role("button", name="Confirm retry of 3").click()
    job = page.locator("#bulk-panel .job")
    expect(job).to_contain_text("3 of 3 processed", timeout=30_000)
    expect(job).to_have_attribute("data-job-state", "done")
    wait_for(lambda: all(site.get(i).state == "succeeded" for i in ids), timeout=30, message="retried ops to succeed")
    assert site.get(late).state == "dead"

    # Selected rows, with the browser's confirmation dialog.
    page.goto(site.url + f"/admin/failed-operations?q={marker}")
    page.once("dialog", lambda dialog: dialog.accept())
    row(page, late).locator("input[name=ids]").check()
    page.get_by_role("button", name="Retry selected").click()
    expect(page.locator("#bulk-notice")).to_contain_text("Retried 1 operation")
    wait_for(lambda: site.get(late).state == "succeeded", timeout=30, message="selected op to succeed")


def test_health_page_updates_after_a_failure_without_reload(page, site, start_worker):
    from playwright.sync_api import expect

    # No automatic requeue: it would retry the demo's old dead letters and move the count meanwhile.
    start_worker(site.backend, AUTO_REQUEUE_AFTER_SECONDS=10 * 365 * 86400)
    page.goto(site.url + "/admin/operations-health?window=1h")
    card = page.locator('[data-metric="dlq_unresolved"] .value')
    expect(card).to_be_visible()
    before = int(card.inner_text())
    page.evaluate("window.__sameDocument = true")
    site.create("test.permanent")  # dies on its first attempt, in the worker
    expect(card).to_have_text(str(before + 1), timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    expect(page.locator("#trend-chart")).to_be_visible()
    assert page.evaluate("typeof Chart !== 'undefined' && Chart.getChart('trend-chart') !== undefined")
    shot(page, "operations-health")


def test_post_without_csrf_is_refused(page, site):
    operation_id = site.dead()
    page.goto(site.url + "/admin/failed-operations")
    status, text = page.evaluate(
        """async (url) => {
        const response = await fetch(url, {method: "POST"});
        return [response.status, await response.text()];
    }""",
        f"/admin/operations/{operation_id}/retry",
    )
    assert status == 400 and "CSRF token" in text
    assert site.get(operation_id).state == "dead"
    status = page.evaluate(
        """async (url) => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        return (await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}})).status;
    }""",
        f"/admin/operations/{operation_id}/retry",
    )
    assert status == 200


def test_issues_page(page, site):
    from playwright.sync_api import expect

    for n in (3, 14, 159):
        site.dead(error=f"Rate limited by provider, retry after {n}s")
    page.goto(site.url + "/admin/issues")
    issue = page.locator("tr", has_text="Rate limited by provider, retry after <n>s")
    expect(issue.locator("td.num").first).to_have_text("3")
    shot(page, "issues")


def test_health_panels_poll_every_10s_and_stop_while_the_tab_is_hidden(page, site):
    """Playwright's clock drives the page's timers, so 10 s pass without anyone waiting for them."""
    from playwright.sync_api import expect

    page.clock.install()
    page.goto(site.url + "/admin/operations-health?window=1h")
    expect(page.locator('[data-metric="dlq_unresolved"]')).to_be_visible()
    # Count the panel requests as htmx starts them, and mark the body as each one completes.
    page.evaluate("""() => {
        window.__polls = [];
        let done = 0;
        const panel = (event) => (event.detail.requestConfig.path || "").includes("/admin/partials/health/");
        document.body.addEventListener("htmx:beforeRequest", (event) => {
            if (panel(event)) window.__polls.push(event.detail.requestConfig.path.split("?")[0]);
        });
        document.body.addEventListener("htmx:afterRequest", (event) => {
            if (panel(event)) document.body.dataset.pollsDone = String(++done);
        });
    }""")
    polls = lambda: sorted(page.evaluate("window.__polls"))  # noqa: E731
    body = page.locator("body")
    panels = sorted(f"/admin/partials/health/{name}" for name in ("breakdown", "cards", "status", "trend"))

    page.clock.run_for(9_000)
    assert polls() == []  # not before 10 s
    page.clock.run_for(1_500)
    assert polls() == panels  # every panel, once
    expect(body).to_have_attribute("data-polls-done", "4")  # answered (a slow answer delays the next poll)
    page.clock.run_for(10_000)
    assert polls() == sorted(panels * 2)
    expect(body).to_have_attribute("data-polls-done", "8")

    page.evaluate("""() => {
        window.__polls = [];
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
        Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    page.clock.run_for(65_000)
    assert polls() == []  # a hidden tab asks for nothing

    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "visible"});
        Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    assert polls() == panels  # back in view: refreshed at once, then every 10 s again
    expect(body).to_have_attribute("data-polls-done", "12")
    page.clock.run_for(10_500)
    assert polls() == sorted(panels * 2)
