"""Admin pages, their htmx partials and the row, bulk and issue actions."""

from __future__ import annotations

import json
from datetime import datetime

from flask import (
    Response,
    abort,
    current_app,
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
from webapp.domain.time import utcnow
from webapp.services.console import bulk
from webapp.services.console.export import export_csv, export_json
from webapp.services.console.failures import (
    dead_letter_stats,
    get_operation_detail,
    get_operations,
    list_operations,
    operation_names,
)
from webapp.services.console.filters import MAX_ID, FilterError, Filters, parse_filters
from webapp.services.console.issues import group_failures
from webapp.services.email.circuits import circuit_states
from webapp.services.engine import operations, pauses
from webapp.services.engine.registry import KINDS
from webapp.services.monitoring import alerts, health_page

TERMINAL_STATES = {state.value for state in TERMINAL}
# Ids in URLs: integers that fit the BIGINT columns (a larger one is a 404, not a database error).
ID = f"int(max={MAX_ID})"


def _by() -> str:
    return current_user.email


def _filters(args=None) -> Filters:
    try:
        return parse_filters(request.args if args is None else args)
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


@bp.errorhandler(operations.NoteTooLong)
def _note_too_long(error: operations.NoteTooLong):
    """An over-long note is refused whole (nothing is resolved), with the limit in the message."""
    return render_template(_error_template(), message=str(error), status=400), 400


@bp.context_processor
def _limits() -> dict:
    """The service's limits, for the forms' ``maxlength``."""
    return {"max_note": operations.MAX_NOTE}


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
    if _is_fragment("ops-list"):
        return render_template("admin/_ops_list.html", page=page, filters=filters)
    return render_template(
        "admin/failed_operations.html",
        page=page,
        filters=filters,
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
    return render_template("admin/_op_details.html", **detail)


def _act(operation_id: int, action) -> Response:
    try:
        action()
    except operations.OperationNotFound as exc:
        abort(404, description=str(exc))
    except operations.OperationError as exc:
        return _row(operation_id, message=str(exc), status=409)
    response = _row(operation_id)
    response.headers["HX-Trigger"] = "statsChanged"
    return response


@bp.post(f"/operations/<{ID}:operation_id>/retry")
@login_required
def retry(operation_id: int):
    """Retry a dead operation; the row comes back live and polls until it finishes."""
    return _act(operation_id, lambda: operations.retry_dead(operation_id, by=_by()))


@bp.post(f"/operations/<{ID}:operation_id>/resolve")
@login_required
def resolve(operation_id: int):
    """Resolve a dead operation with a note (who and when are recorded)."""
    note = request.form.get("note") or ""
    return _act(operation_id, lambda: operations.resolve(operation_id, by=_by(), note=note))


@bp.post(f"/operations/<{ID}:operation_id>/cancel")
@login_required
def cancel(operation_id: int):
    """Cancel an operation that has not started (a scheduled one)."""
    return _act(operation_id, lambda: operations.cancel(operation_id, by=_by()))


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
            done, skipped = bulk.retry_ids(ids, by=_by())
            message = f"Retried {done} operation{'s' * (done != 1)}"
        else:
            done, skipped = bulk.resolve_ids(ids, by=_by(), note=request.form.get("note") or "")
            message = f"Resolved {done} operation{'s' * (done != 1)}"
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    if skipped:
        message += f"; {skipped} skipped (no longer dead or already resolved)"
    response = make_response(render_template("admin/_notice.html", message=message + "."))
    response.headers["HX-Trigger"] = json.dumps({"opsChanged": True, "statsChanged": True})
    return response


# --- retry everything matching: snapshot, confirm, progress, cancel -------------------


@bp.post("/bulk-jobs")
@login_required
def bulk_preview():
    """Snapshot what matches the filter now and ask for confirmation, showing the count."""
    filters = _filters(request.form)
    try:
        job = bulk.create_draft(filters, by=_by())
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    return render_template("admin/_bulk_confirm.html", job=job)


@bp.post(f"/bulk-jobs/<{ID}:job_id>/start")
@login_required
def bulk_start(job_id: int):
    """Confirm: the background job starts working through the snapshot."""
    return _bulk_job_action(lambda: bulk.start(job_id, by=_by()))


@bp.post(f"/bulk-jobs/<{ID}:job_id>/cancel")
@login_required
def bulk_cancel(job_id: int):
    """Cancel a draft at once, or a running job after its current batch."""
    return _bulk_job_action(lambda: bulk.cancel(job_id))


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
        resolved = bulk.resolve_matching(filters, by=_by(), note=note)
    except bulk.BulkError as exc:
        abort(400, description=str(exc))
    response = make_response(
        render_template("admin/_notice.html", message=f"Resolved {resolved} operation{'s' * (resolved != 1)}.")
    )
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


# --- operations health ------------------------------------------------------------------


def _window() -> str:
    window = request.args.get("window", "24h")
    if window not in health_page.WINDOWS:
        abort(400, description=f"window must be one of {', '.join(health_page.WINDOWS)}")
    return window


def _cards_context(window: str) -> dict:
    metrics = health_page.health_metrics(window, current_app.config["HEALTH_THRESHOLDS"])
    return {
        "metrics": metrics,
        "critical": health_page.critical(metrics),
        "window": window,
        "thresholds": current_app.config["HEALTH_THRESHOLDS"],
    }


def _status_context() -> dict:
    return {
        "heartbeats": health_page.heartbeats(utcnow(), current_app.config),
        "circuits": circuit_states(),
        "alerts": alerts.recent_alerts(10),
        "pauses": pauses.list_pauses(),
    }


@bp.get("/operations-health")
@login_required
def health():
    """The health dashboard; its panels refresh themselves every 10 s."""
    window = _window()
    return render_template(
        "admin/operations_health.html",
        windows=list(health_page.WINDOWS),
        breakdown=health_page.breakdown(window),
        trend=health_page.trend(window),
        **_cards_context(window),
        **_status_context(),
    )


@bp.get("/partials/health/cards")
@login_required
def health_cards():
    """The metric cards and the critical banner."""
    return render_template("admin/_health_cards.html", **_cards_context(_window()))


@bp.get("/partials/health/status")
@login_required
def health_status():
    """Heartbeats, email circuits, pauses and recent alerts."""
    return render_template("admin/_health_status.html", **_status_context())


@bp.get("/partials/health/breakdown")
@login_required
def health_breakdown():
    """The per-name table."""
    return render_template("admin/_health_breakdown.html", breakdown=health_page.breakdown(_window()))


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
    try:
        (pauses.pause if action == "pause" else pauses.resume)(name, _by())
    except ValueError as exc:
        abort(400, description=str(exc))
    return render_template("admin/_health_status.html", **_status_context())


def _error_template() -> str:
    return "admin/_error.html" if request.headers.get("HX-Request") else "admin/error.html"
