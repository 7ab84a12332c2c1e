"""The console under its Content-Security-Policy in a real Chromium: nothing refused, htmx and the chart work,
inline script does not run, and no other site can frame the login form."""

from __future__ import annotations

import re

import pytest

from tests.console.test_browser import EMAIL, PASSWORD, TIMEOUT_MS, browser, log_in, row, site  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

# Records every CSP violation the page reports, before any of the page's own scripts run.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
    window.__violations.push(event.violatedDirective + " " + (event.blockedURI || "inline") + " " + event.sample);
});
"""


@pytest.fixture
def watched(browser, site):  # noqa: F811  (the imported fixtures)
    """A logged-in page whose console errors and CSP violations are collected."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("console", lambda message: _is_error(message) and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    log_in(page, site)
    yield page
    context.close()


def _is_error(message) -> bool:
    # The browser's own request for /favicon.ico (there is none) is not the page's doing.
    return message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico")


def _violations(page) -> list[str]:
    return page.evaluate("window.__violations")


def test_console_pages_and_htmx_actions_work_under_the_policy(watched, site):  # noqa: F811
    from playwright.sync_api import expect

    page = watched
    assert "script-src 'self'" in page.evaluate(
        "fetch('/admin/issues').then(r => r.headers.get('content-security-policy'))"
    )
    # The health page: the chart is drawn and the panels refresh through htmx.
    expect(page.locator("#trend-chart")).to_be_visible()
    page.wait_for_function("typeof Chart !== 'undefined' && Chart.getChart('trend-chart') !== undefined")
    with page.expect_response(re.compile(r"/admin/partials/health/cards")):
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")

    # The failed-operations page: a filter through htmx, then a retry and a resolve in place.
    marker = "cspcheck"
    retried = site.dead(error=f"Provider outage {marker} 1")
    resolved = site.dead(error=f"Provider outage {marker} 2")
    page.goto(site.url + "/admin/failed-operations")
    page.fill("#q", marker)
    expect(page).to_have_url(re.compile(rf"q={marker}"))
    expect(page.locator("tbody.op")).to_have_count(2)
    row(page, retried).get_by_role("button", name="Retry").click()
    expect(row(page, retried).locator(".state")).to_have_text(re.compile("pending|running|retrying|succeeded"))
    row(page, resolved).locator("summary", has_text="Resolve").click()
    row(page, resolved).locator("input[name=note]").fill("handled under the CSP")
    row(page, resolved).get_by_role("button", name="Resolve").click()
    expect(row(page, resolved)).to_contain_text(f"resolved by {EMAIL}")
    assert site.get(resolved).resolution_note == "handled under the CSP"

    page.goto(site.url + "/admin/issues")
    expect(page.locator("h1")).to_have_text("Issues")
    assert _violations(page) == []
    assert page.errors == []

    # The control: markup that would run as inline script is refused, and the page reports it.
    page.evaluate("""() => {
        document.body.insertAdjacentHTML("beforeend", '<img src="data:," onload="window.__ran = 1">');
        const script = document.createElement("script");
        script.textContent = "window.__ran = 2";
        document.body.appendChild(script);
    }""")
    page.wait_for_function("window.__violations.length >= 2")
    assert page.evaluate("window.__ran") is None
    assert all(v.startswith("script-src") for v in _violations(page)), _violations(page)


def test_another_site_cannot_frame_the_login_form(browser, site):  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # A page of another origin (about:blank here, any attacker's site in life) framing the login form.
    blocked = lambda message: "frame-ancestors" in message.text or "X-Frame-Options" in message.text  # noqa: E731
    with page.expect_console_message(blocked):
        page.set_content(f'<iframe id="victim" src="{site.url}/admin/login"></iframe>')
    assert page.frame_locator("#victim").locator("input[name=email]").count() == 0
    context.close()
