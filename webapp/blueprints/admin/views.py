"""Admin pages, their htmx partials and the row, bulk and issue actions."""

from __future__ import annotations

import json
from datetime import datetime

from flask import (
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required
from werkzeug.exceptions import HTTPException

from webapp.blueprints.admin.blueprint import bp
from webapp.domain.states import TERMINAL
from webapp.domain.text import text_problem
from webapp.domain.time import as_naive_utc, utcnow
from webapp.services.console import audit, bulk, explorer
from webapp.services.console.export import export_csv, export_json
from webapp.services.console.failures import (
    dead_letter_stats,
    get_operation_detail,
    get_operations,
    list_operations,
    operation_names,
)
from webapp.services.console.filters import (
    ERROR_SEARCH_WINDOW,
    MAX_ID,
    SEARCHES,
    STATES,
    FilterError,
    Filters,
    parse_filters,
    search_kind,
)
from webapp.services.console.issues import fingerprint_text, group_failures
from webapp.services.email.circuits import circuit_states
from webapp.services.engine import operations, pauses
from webapp.services.engine.registry import KINDS
from webapp.services.monitoring import alerts, channels, health_page

TERMINAL_STATES = {state.value for state in TERMINAL}
# Ids in URLs: integers that fit the BIGINT columns (a larger one is a 404, not a database error).
ID = f"int(max={MAX_ID})"


def _by() -> str:
    return current_user.email


def _address() -> str:
    """The client address the audit log records: the log-in throttle's source (proxies per TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


def _audited(action: str, operation_id: int, **fields):
    """A context that records ``action`` on the operation, by this admin from this address, with the action's commit."""
    return audit.recorded(
        action, actor=_by(), target_type="operation", target_id=str(operation_id), address=_address(), **fields
    )


def _filters(args=None, *, explorer: bool = False) -> Filters:
    try:
        return parse_filters(request.args if args is None else args, explorer=explorer)
    except FilterError as exc:
        abort(400, description=str(exc))


def _page(filters: Filters):
    try:
        return list_operations(filters, cursor=request.args.get("cursor"), limit=current_app.config["ADMIN_PAGE_SIZE"])
    except FilterError as exc:
        abort(400, description=str(exc))


def _is_fragment(target: str) -> bool:
    """An htmx request for one fragment of a page (not a history restore)."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-Target") == target
        and not request.headers.get("HX-History-Restore-Request")
    )


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    """4xx inside the console: a readable message, as a fragment for htmx or a small page."""
    return render_template(_error_template(), message=error.description, status=error.code), error.code


@bp.errorhandler(operations.InvalidNote)
def _note_too_long(error: operations.InvalidNote):
    """An over-long (or unstorable) note is refused whole (nothing is resolved), saying why."""
    return render_template(_error_template(), message=str(error), status=400), 400


@bp.context_processor
def _limits() -> dict:
    """The service's limits, for the forms' ``maxlength``, the time the page was rendered, and
    (called only by bulk-job cards) the pause holding bulk retries, if any."""
    return {
        "max_note": operations.MAX_NOTE,
        "max_attempts": operations.MAX_EXTRA_ATTEMPTS,
        "now": utcnow(),
        "bulk_pause": _bulk_pause,
    }


def _bulk_pause() -> dict | None:
    """The pause of the bulk-retry operation name, or None while bulk jobs can run."""
    return next((item for item in pauses.list_pauses() if item["name"] == bulk.JOB_OPERATION and item["paused"]), None)


@bp.app_template_filter("utc")
def _utc(value: datetime | None) -> str:
    """A naive-UTC timestamp as people read it, zone labelled: '2026-12-02 04:05:31 UTC'."""
    if value is None:
        return "—"
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


@bp.app_template_filter("ago")
def _ago(value: datetime | None) -> str:
    """'5m ago' (or 'in 5m' for a future time) for timestamps in naive UTC."""
    if value is None:
        return "—"
    seconds = int((utcnow() - value).total_seconds())
    ahead, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or unit == "s":
            amount = f"{seconds // size}{unit}"
            return f"in {amount}" if ahead else f"{amount} ago"


@bp.app_template_filter("duration")
def _duration(seconds: float | None) -> str:
    """Seconds as '42s', '3m 10s' or '2h 5m'."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


@bp.get("/")
@login_required
def home():
    """The console's start page is the health dashboard."""
    return redirect(url_for("admin.health"))


# --- failed operations ------------------------------------------------------------------


@bp.get("/failed-operations")
@login_required
def failed_operations():
    """Stat cards, filters, and the keyset-paginated list (the list alone for htmx filter changes)."""
    filters = _filters()
    page = _page(filters)
    chip_text = fingerprint_text(filters.fingerprint) if filters.fingerprint else ""
    if _is_fragment("ops-list"):
        return render_template("admin/_ops_list.html", page=page, filters=filters, fingerprint_text=chip_text)
    return render_template(
        "admin/failed_operations.html",
        page=page,
        filters=filters,
        fingerprint_text=chip_text,
        stats=dead_letter_stats(),
        kinds=KINDS,
        names=operation_names(),
        jobs=bulk.recent_jobs(3),
    )


@bp.get("/partials/operations")
@login_required
def operations_page():
    """The next page of rows (the "Load more" button), appended below the current ones."""
    filters = _filters()
    page = _page(filters)
    return render_template("admin/_ops_rows.html", page=page, filters=filters)


@bp.get("/partials/stats")
@login_required
def stats():
    """The failed-operations stat cards."""
    return render_template("admin/_stats.html", stats=dead_letter_stats())


def _row(operation_id: int, message: str | None = None, status: int = 200):
    operation = get_operations([operation_id])
    if not operation:
        abort(404, description=f"operation {operation_id} does not exist")
    response = make_response(
        render_template(
            "admin/_op_row.html", op=operation[0], message=message, live=operation[0].state not in TERMINAL_STATES
        ),
        status,
    )
    return response


@bp.get(f"/partials/operations/<{ID}:operation_id>/row")
@login_required
def operation_row(operation_id: int):
    """One row in its current state (polled after a retry until the state is terminal)."""
    response = _row(operation_id)
    response.headers["HX-Trigger"] = "statsChanged"
    return response


@bp.get(f"/partials/operations/<{ID}:operation_id>/details")
@login_required
def operation_details(operation_id: int):
    """Payload, error, stack, every attempt, the related purchase, customer and email log."""
    detail = get_operation_detail(operation_id)
    if detail is None:
        abort(404, description=f"operation {operation_id} does not exist")
    trail = audit.entries_for("operation", str(operation_id))
    return render_template("admin/_op_details.html", trail=trail, **detail)


def _conflict(operation_id: int, verb: str) -> str:
    """One sentence for an action a stale page asked for: what is true now, and that nothing was done."""
    operation = get_operations([operation_id])[0]
    state = "dead and already resolved" if operation.state == "dead" and operation.resolved_at else operation.state
    return f"Not {verb}: operation {operation_id} is {state} now (changed elsewhere); this row shows its current state."


def _act(operation_id: int, action, verb: str, audited: str, **fields) -> Response:
    """Do ``action`` on one operation, audited as ``audited``; the row comes back (409: with its true state)."""
    try:
        with _audited(audited, operation_id, **fields):
            action()
    except operations.InvalidArgument as exc:
        abort(400, description=str(exc))
    except operations.OperationNotFound as exc:
        abort(404, description=str(exc))
    except operations.OperationError:
        # 409 with the row's true state: the page's script swaps it in place of the stale one.
        response = _row(operation_id, message=_conflict(operation_id, verb), status=409)
        response.headers["HX-Trigger"] = "statsChanged"
        response.headers["X-Row-State"] = get_operations([operation_id])[0].state
        return response
    response = _row(operation_id)
    response.headers["HX-Trigger"] = "statsChanged"
    return response


def _attempts() -> int:
    """The form's ``attempts`` (how many more attempts a retry grants), 1 when absent; 400 if not 1 to 20."""
    raw = (request.form.get("attempts") or "1").strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3):
        abort(400, description=f"attempts must be a whole number from 1 to {operations.MAX_EXTRA_ATTEMPTS}")
    try:
        return operations.checked_attempts(int(raw))
    except operations.InvalidArgument as exc:
        abort(400, description=str(exc))


def _run_at(field: str = "run_at") -> datetime:
    """The form's new run time (ISO date-time, UTC unless it says otherwise); 400 if missing or malformed."""
    raw = (request.form.get(field) or "").strip()
    if not raw:
        abort(400, description="choose the new run time (UTC)")
    try:
        return as_naive_utc(datetime.fromisoformat(raw[:40].replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        abort(400, description=f"the new run time must be an ISO date-time in UTC, got {raw[:40]!r}")


@bp.post(f"/operations/<{ID}:operation_id>/retry")
@login_required
def retry(operation_id: int):
    """Retry a dead operation (granting ``attempts`` more, default 1); the row comes back live and polls."""
    attempts = _attempts()
    return _act(
        operation_id,
        lambda: operations.retry_dead(operation_id, by=_by(), extra_attempts=attempts),
        "retried",
        "operation.retry",
        details={"attempts": attempts},
    )


@bp.post(f"/operations/<{ID}:operation_id>/resolve")
@login_required
def resolve(operation_id: int):
    """Resolve a dead operation with a note (who and when are recorded)."""
    note = request.form.get("note") or ""
    return _act(
        operation_id,
        lambda: operations.resolve(operation_id, by=_by(), note=note),
        "resolved",
        "operation.resolve",
        note=operations.checked_note(note),
    )


@bp.post(f"/operations/<{ID}:operation_id>/cancel")
@login_required
def cancel(operation_id: int):
    """Cancel an operation that has not started (a scheduled one)."""
    return _act(operation_id, lambda: operations.cancel(operation_id, by=_by()), "cancelled", "operation.cancel")


@bp.post(f"/operations/<{ID}:operation_id>/run-now")
@login_required
def run_now(operation_id: int):
    """Make a scheduled or retrying operation due now (the worker is rung at once)."""
    return _act(operation_id, lambda: operations.run_now(operation_id), "run now", "operation.run_now")


@bp.post(f"/operations/<{ID}:operation_id>/reschedule")
@login_required
def reschedule(operation_id: int):
    """Move a scheduled or retrying operation to the chosen time (future, within a year)."""
    run_at = _run_at()
    return _act(
        operation_id,
        lambda: operations.reschedule_waiting(operation_id, run_at),
        "rescheduled",
        "operation.reschedule",
        details={"run_at": run_at},
    )


@bp.post("/operations/bulk")
@login_required
def bulk_selected():
    """Retry or resolve the selected rows now; the list then reloads."""
    action = request.form.get("action")
    if action not in ("retry", "resolve"):
        abort(400, description="action must be retry or resolve")
    ids = request.form.getlist("ids")
    try:
        if action == "retry":
            done, skipped = bulk.retry_ids(ids, by=_by(), address=_address())
            message = f"Retried {done} operation{'s' * (done != 1)}"
        else:
            done, skipped = bulk.resolve_ids(ids, by=_by(), note=request.form.get("note") or "", address=_address())
            message = f"Resolved {done} operation{'s' * (done != 1)}"
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    if skipped:
        message += f"; {skipped} skipped (no longer dead or already resolved)"
    response = make_response(render_template("admin/_notice.html", message=message + "."))
    response.headers["HX-Trigger"] = json.dumps({"opsChanged": True, "statsChanged": True})
    return response


# --- operations explorer ----------------------------------------------------------------


@bp.get("/operations")
@login_required
def operations_explorer():
    """Every operation in any state, newest first: filters in the URL, keyset pages, htmx partials.

    The same URL answers htmx with the list (a filter change) or only the next rows ("Load more").
    """
    filters = _filters(explorer=True)
    page = _page(filters)
    context = {
        "page": page,
        "filters": filters,
        "searched_as": search_kind(filters) if filters.q else None,
        "error_window": ERROR_SEARCH_WINDOW,
    }
    if _is_fragment("explorer-more"):
        return render_template("admin/_explorer_rows.html", **context)
    if _is_fragment("explorer-list"):
        return render_template("admin/_explorer_list.html", **context)
    return render_template(
        "admin/operations.html", **context, states=STATES, searches=SEARCHES, kinds=KINDS, names=operation_names()
    )


@bp.get(f"/operations/<{ID}:operation_id>")
@login_required
def operation_permalink(operation_id: int):
    """One operation's page: its timeline (created, ring, attempts, admin actions, result) and what it is about."""
    detail = explorer.operation_page(operation_id)
    if detail is None:
        abort(404, description=f"operation {operation_id} does not exist")
    operation = detail["operation"]
    result_json = None if operation.result is None else json.dumps(operation.result, indent=2, sort_keys=True)
    return render_template("admin/operation.html", **detail, result_json=result_json)


# --- retry everything matching: snapshot, confirm, progress, cancel -------------------


@bp.post("/bulk-jobs")
@login_required
def bulk_preview():
    """Snapshot what matches the filter now and ask for confirmation, showing the count.

    ``action`` is retry (dead letters; the default), run_now, reschedule (with ``run_at``) or
    cancel (scheduled, retrying or due work).
    """
    filters = _filters(request.form)
    action = request.form.get("bulk_action") or "retry"
    run_at = _run_at() if action == "reschedule" else None
    try:
        job = bulk.create_draft(filters, by=_by(), action=action, run_at=run_at)
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    return render_template("admin/_bulk_confirm.html", job=job)


@bp.post(f"/bulk-jobs/<{ID}:job_id>/start")
@login_required
def bulk_start(job_id: int):
    """Confirm: the background job starts working through the snapshot."""
    expire = current_app.config["BULK_DRAFT_EXPIRE_MINUTES"]
    return _bulk_job_action(lambda: bulk.start(job_id, by=_by(), draft_expire_minutes=expire, address=_address()))


@bp.post(f"/bulk-jobs/<{ID}:job_id>/cancel")
@login_required
def bulk_cancel(job_id: int):
    """Cancel a draft at once, or a running job after its current batch."""
    return _bulk_job_action(lambda: bulk.cancel(job_id, by=_by(), address=_address()))


def _bulk_job_action(action):
    """Run a bulk-job action; an unknown job is 404, a job in the wrong state 409."""
    try:
        job = action()
    except bulk.BulkJobNotFound as exc:
        abort(404, description=str(exc))
    except bulk.BulkError as exc:
        abort(409, description=str(exc))
    return render_template("admin/_bulk_job.html", job=job)


@bp.get(f"/partials/bulk-jobs/<{ID}:job_id>")
@login_required
def bulk_progress(job_id: int):
    """A job's progress (polled every second until it finishes; then the list reloads)."""
    try:
        job = bulk.get_job(job_id)
    except bulk.BulkError as exc:
        abort(404, description=str(exc))
    response = make_response(render_template("admin/_bulk_job.html", job=job))
    if job.finished:
        response.headers["HX-Trigger"] = json.dumps({"opsChanged": True, "statsChanged": True})
    return response


# --- issues -----------------------------------------------------------------------------


@bp.get("/issues")
@login_required
def issues():
    """Failures grouped by their stored error fingerprint (grouped in SQL, over every match)."""
    filters = _filters()
    as_of = utcnow()
    found = group_failures(filters, now=as_of)
    return render_template(
        "admin/issues.html",
        found=found,
        issues=found.issues,
        filters=filters,
        kinds=KINDS,
        names=operation_names(),
        as_of=as_of.isoformat(),
    )


def _group_filters(fingerprint: str, **extra) -> Filters:
    """The Issues page's filters for one group, up to ``until`` (when the page was shown)."""
    return _filters({**request.form.to_dict(), **extra, "fingerprint": fingerprint})


@bp.post("/issues/<fingerprint>/retry")
@login_required
def issue_retry(fingerprint: str):
    """Retry a group: the same snapshot-and-confirm flow as "retry everything matching"."""
    filters = _group_filters(fingerprint)
    try:
        job = bulk.create_draft(filters, by=_by())
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    return render_template("admin/_bulk_confirm.html", job=job)


@bp.post("/issues/<fingerprint>/resolve")
@login_required
def issue_resolve(fingerprint: str):
    """Resolve the group's unresolved failures shown on the page (dead by ``until``), with a note."""
    note = request.form.get("note") or ""
    filters = _group_filters(fingerprint, status="unresolved")
    try:
        resolved = bulk.resolve_matching(filters, by=_by(), note=note, address=_address())
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    # The page reloads (its counts changed): the notice travels in the session to survive it.
    message = f"Resolved {resolved} operation{'s' * (resolved != 1)} failing with “{fingerprint_text(fingerprint)}”."
    flash(message)
    response = make_response(render_template("admin/_notice.html", message=message))
    response.headers["HX-Refresh"] = "true"
    return response


# --- export -----------------------------------------------------------------------------


@bp.get("/failed-operations/export.<fmt>")
@login_required
def export(fmt: str):
    """The filtered set as CSV or JSON, streamed in keyset batches."""
    if fmt not in ("csv", "json"):
        abort(404, description="export as .csv or .json")
    filters = _filters()
    generate = export_csv if fmt == "csv" else export_json
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return Response(
        stream_with_context(generate(filters)),
        mimetype="text/csv" if fmt == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="failed-operations-{stamp}.{fmt}"'},
    )


# --- audit log --------------------------------------------------------------------------


def filtered_page(parse, list_page):
    """The query's filters and one keyset page of what they match; 400 naming a bad filter or cursor."""
    try:
        filters = parse(request.args)
        page = list_page(filters, cursor=request.args.get("cursor"), limit=current_app.config["ADMIN_PAGE_SIZE"])
    except FilterError as exc:
        abort(400, description=str(exc))
    return filters, page


def _audit_page():
    return filtered_page(audit.parse_audit_filters, audit.list_entries)


@bp.get("/audit")
@login_required
def audit_log():
    """Who did what: filters kept in the URL, keyset pagination (the list alone for htmx filter changes)."""
    filters, page = _audit_page()
    if _is_fragment("audit-list"):
        return render_template("admin/_audit_list.html", page=page, filters=filters)
    return render_template(
        "admin/audit.html",
        page=page,
        filters=filters,
        actions=audit.ACTIONS,
        actors=audit.actors(),
        retention_days=f"{current_app.config['RETENTION_AUDIT_DAYS']:g}",
    )


@bp.get("/partials/audit")
@login_required
def audit_rows():
    """The next page of audit entries (the "Load more" button)."""
    filters, page = _audit_page()
    return render_template("admin/_audit_rows.html", page=page, filters=filters)


# --- operations health ------------------------------------------------------------------


def _window() -> str:
    window = request.args.get("window", "24h")
    if window not in health_page.WINDOWS:
        abort(400, description=f"window must be one of {', '.join(health_page.WINDOWS)}")
    return window


def _cards_context(window: str, now: datetime, counts: tuple) -> dict:
    """The cards' template context from the window's counts (read once per request)."""
    totals, as_of = counts
    metrics = health_page.health_metrics(window, current_app.config["HEALTH_THRESHOLDS"], now, totals=totals)
    return {
        "metrics": metrics,
        "critical": health_page.critical(metrics),
        "window": window,
        "thresholds": current_app.config["HEALTH_THRESHOLDS"],
        "as_of": as_of,
    }


def _status_context() -> dict:
    return {
        "heartbeats": health_page.heartbeats(utcnow(), current_app.config),
        "consumers": health_page.consumers(utcnow(), current_app.config),
        "consumer_lost_after": current_app.config["CONSUMER_LOST_AFTER_SECONDS"],
        "circuits": circuit_states(),
        "alerts": alerts.recent_alerts(10),
        "alert_channels": channels.describe(current_app.config),
        "pauses": pauses.list_pauses(),
    }


@bp.get("/operations-health")
@login_required
def health():
    """The health dashboard; its panels refresh themselves every 10 s."""
    window, now = _window(), utcnow()
    counts = health_page.window_counts(window, now)
    return render_template(
        "admin/operations_health.html",
        windows=list(health_page.WINDOWS),
        breakdown=health_page.breakdown(window, now, totals=counts[0]),
        trend=health_page.trend(window, now),
        **_cards_context(window, now, counts),
        **_status_context(),
    )


@bp.get("/partials/health/cards")
@login_required
def health_cards():
    """The metric cards and the critical banner."""
    window, now = _window(), utcnow()
    return render_template(
        "admin/_health_cards.html", **_cards_context(window, now, health_page.window_counts(window, now))
    )


@bp.get("/partials/health/status")
@login_required
def health_status():
    """Heartbeats, consumers, email circuits, pauses and recent alerts."""
    return render_template("admin/_health_status.html", **_status_context())


@bp.get("/partials/health/breakdown")
@login_required
def health_breakdown():
    """The per-name table."""
    window, now = _window(), utcnow()
    totals, as_of = health_page.window_counts(window, now)
    return render_template(
        "admin/_health_breakdown.html", breakdown=health_page.breakdown(window, now, totals=totals), as_of=as_of
    )


@bp.get("/partials/health/trend")
@login_required
def health_trend():
    """The chart's data (the page's script redraws the chart from it)."""
    return render_template("admin/_health_trend.html", trend=health_page.trend(_window()))


@bp.post("/pauses/<name>/<action>")
@login_required
def pause_action(name: str, action: str):
    """Pause or resume a named activity; the status panel comes back."""
    if action not in ("pause", "resume"):
        abort(404, description="action must be pause or resume")
    note = (request.form.get("note") or "").strip()
    if problem := text_problem(name):  # a bad name is named as such before any missing reason
        abort(400, description=f"the operation name {problem}")
    if action == "pause" and not note:
        abort(400, description=f"Give a reason for pausing {name[:120]}: it is shown beside the pause.")
    try:
        with audit.recorded(
            action, actor=_by(), target_type="operation_name", target_id=name, note=note or None, address=_address()
        ):
            if action == "pause":
                pauses.pause(name, _by(), note)
            else:
                pauses.resume(name, _by())
    except ValueError as exc:
        abort(400, description=str(exc))
    return render_template("admin/_health_status.html", **_status_context())


def _error_template() -> str:
    return "admin/_error.html" if request.headers.get("HX-Request") else "admin/error.html"
