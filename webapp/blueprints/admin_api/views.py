"""The admin API's routes: operations, bulk retry, pauses, and seed 003's read-only views."""

from __future__ import annotations

import re

from flask import current_app, g, jsonify, request

from webapp.blueprints.admin_api.blueprint import bp
from webapp.blueprints.json_api import ApiError, iso
from webapp.domain.time import utcnow
from webapp.services.console import bulk, failures
from webapp.services.console.export import operation_record
from webapp.services.console.filters import MAX_ID, FilterError, Filters, parse_filters
from webapp.services.engine import operations, pauses
from webapp.services.monitoring import health_page

MAX_LIMIT = 500
# Ids in URLs: integers that fit the BIGINT columns (a larger one is a 404, not a database error).
ID = f"int(max={MAX_ID})"


def _actor() -> str:
    return f"token:{g.api_token.name}"


def _filters(args) -> Filters:
    try:
        return parse_filters(args)
    except FilterError as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from None


def _limit(default: int = 50) -> int:
    raw = request.args.get("limit", str(default))
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _json_body() -> dict:
    if not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


def _note(body: dict) -> str:
    """The body's ``note``, which must be a string if given (its length is the service's to judge)."""
    note = body.get("note", "")
    if not isinstance(note, str):
        raise ApiError(400, "invalid_note", "note must be a string")
    return note


def _operation_json(operation_id: int) -> dict:
    detail = failures.get_operation_detail(operation_id)
    if detail is None:
        raise ApiError(404, "not_found", f"operation {operation_id} does not exist")
    record = operation_record(detail["operation"], iso)
    record["error_stack"] = detail["operation"].error_stack
    record["attempts_log"] = [
        {
            "number": a.number,
            "started_at": iso(a.started_at),
            "finished_at": iso(a.finished_at),
            "duration_ms": a.duration_ms,
            "outcome": a.outcome,
            "error_class": a.error_class,
            "error_message": a.error_message,
        }
        for a in detail["attempts"]
    ]
    purchase, customer = detail["purchase"], detail["customer"]
    record["purchase"] = (
        None
        if purchase is None
        else {
            "id": purchase.id,
            "status": purchase.status,
            "amount_cents": purchase.amount_cents,
            "currency": purchase.currency,
            "fulfilment_status": purchase.fulfilment_status,
        }
    )
    record["customer"] = (
        None if customer is None else {"id": customer.id, "email": customer.email, "name": customer.name}
    )
    record["email_log"] = [
        {
            "created_at": iso(e.created_at),
            "to": e.to_address,
            "template": e.template,
            "provider": e.provider,
            "status": e.status,
            "provider_message_id": e.provider_message_id,
            "error": e.error,
        }
        for e in detail["emails"]
    ]
    return record


def _job_json(job) -> dict:
    return {
        "id": job.id,
        "action": job.action,
        "state": job.state,
        "filters": Filters.from_json(job.filters or {}).to_json(),
        "total": job.total,
        "processed": job.processed,
        "retried": job.succeeded,
        "skipped": job.skipped,
        "cancel_requested": job.cancel_requested,
        "operation_id": job.operation_id,
        "created_by": job.created_by,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
    }


# --- operations ---------------------------------------------------------------------------


@bp.get("/operations")
def list_operations():
    """Operations matching the console's filters, keyset-paginated (``cursor`` from the last page)."""
    filters = _filters(request.args)
    try:
        page = failures.list_operations(filters, cursor=request.args.get("cursor"), limit=_limit())
    except FilterError as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return jsonify(
        operations=[operation_record(op, iso) for op in page.rows],
        next_cursor=page.next_cursor,
        filters=filters.to_json(),
    )


@bp.get(f"/operations/<{ID}:operation_id>")
def get_operation(operation_id: int):
    """One operation with its attempts, related purchase, customer and email log."""
    return jsonify(_operation_json(operation_id))


def _act(operation_id: int, action):
    try:
        action()
    except operations.OperationNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except operations.OperationError as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None
    return jsonify(_operation_json(operation_id))


@bp.post(f"/operations/<{ID}:operation_id>/retry")
def retry(operation_id: int):
    """Retry a dead operation."""
    return _act(operation_id, lambda: operations.retry_dead(operation_id, by=_actor()))


@bp.post(f"/operations/<{ID}:operation_id>/resolve")
def resolve(operation_id: int):
    """Resolve a dead operation; body ``{"note": "..."}`` (a note over the limit is refused)."""
    note = _note(_json_body())
    return _act(operation_id, lambda: operations.resolve(operation_id, by=_actor(), note=note))


@bp.post(f"/operations/<{ID}:operation_id>/cancel")
def cancel(operation_id: int):
    """Cancel an operation that has not started."""
    return _act(operation_id, lambda: operations.cancel(operation_id, by=_actor()))


@bp.post("/operations/bulk-retry")
def bulk_retry():
    """Snapshot the dead operations matching ``{"filters": {...}}`` now and retry them in the background."""
    body = _json_body()
    raw = body.get("filters", {})
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_filter", "filters must be a JSON object")
    filters = _filters({key: str(value) for key, value in raw.items() if value is not None})
    try:
        job = bulk.create_draft(filters, by=_actor())
        job = bulk.start(job.id, by=_actor()) if job.total else bulk.cancel(job.id)
    except bulk.BulkError as exc:
        raise ApiError(400, "invalid_bulk", str(exc)) from None
    return jsonify(bulk_job=_job_json(job)), 202


@bp.get(f"/bulk-jobs/<{ID}:job_id>")
def bulk_job(job_id: int):
    """A bulk job's progress."""
    try:
        return jsonify(bulk_job=_job_json(bulk.get_job(job_id)))
    except bulk.BulkError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@bp.post(f"/bulk-jobs/<{ID}:job_id>/cancel")
def bulk_job_cancel(job_id: int):
    """Stop a bulk job after its current batch."""
    try:
        return jsonify(bulk_job=_job_json(bulk.cancel(job_id)))
    except bulk.BulkJobNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except bulk.BulkError as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None


# --- seed 003's views ---------------------------------------------------------------------


@bp.get("/queue-health")
def queue_health():
    """Counts by state, Huey's depth and whether the reconciler beats."""
    return jsonify(health_page.queue_health(utcnow(), current_app.config))


@bp.get("/delivery-stats")
def delivery_stats():
    """Totals and per-name stats for operations created in ``range`` (1h, 24h, 7d)."""
    window = request.args.get("range", "24h")
    try:
        return jsonify(health_page.delivery_stats(window))
    except health_page.WindowError as exc:
        raise ApiError(400, "invalid_range", str(exc)) from None


@bp.get("/recent-failures")
def recent_failures():
    """The latest dead-lettered operations (resolved or not), newest first."""
    page = failures.list_operations(Filters(status="all"), limit=_limit(20))
    recent = [
        {
            "id": op.id,
            "kind": op.kind,
            "name": op.name,
            "status": op.state,
            "subject": op.subject,
            "attempts": op.attempts,
            "max_attempts": op.max_attempts,
            "error_class": op.error_class,
            "error_message": op.error_message,
            "created_at": iso(op.created_at),
            "last_attempt_at": iso(op.last_attempt_at),
            "dead_at": iso(op.dead_at),
            "resolved_at": iso(op.resolved_at),
        }
        for op in page.rows
    ]
    return jsonify(failures=recent, count=len(recent))


@bp.get("/health")
def health_metrics():
    """The health page's graded metrics for ``window`` (1h, 24h, 7d)."""
    window = request.args.get("window", "24h")
    try:
        metrics = health_page.health_metrics(window, current_app.config["HEALTH_THRESHOLDS"])
    except health_page.WindowError as exc:
        raise ApiError(400, "invalid_window", str(exc)) from None
    return jsonify(
        window=window,
        metrics=[
            {"key": m.key, "label": m.label, "value": m.value, "unit": m.unit, "status": m.status, "detail": m.detail}
            for m in metrics
        ],
        critical=[m.key for m in health_page.critical(metrics)],
    )


@bp.get("/dead-letter-queue")
def dead_letter_queue():
    """Unresolved dead letters with full event data (payload, stack), keyset-paginated."""
    args = {"status": "unresolved", **request.args.to_dict()}
    filters = _filters(args)
    if not filters.dead_only:
        raise ApiError(400, "invalid_filter", "the dead-letter queue holds dead operations only")
    try:
        page = failures.list_operations(filters, cursor=request.args.get("cursor"), limit=_limit())
    except FilterError as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    items = []
    for op in page.rows:
        record = operation_record(op, iso)
        record["error_stack"] = op.error_stack
        items.append(record)
    return jsonify(dead_letters=items, count=len(items), next_cursor=page.next_cursor)


# --- pauses -------------------------------------------------------------------------------


def _pause_json(item: dict) -> dict:
    return {**item, "paused_at": iso(item["paused_at"])}


def _find(name: str) -> dict:
    item = next((item for item in pauses.list_pauses() if item["name"] == name), None)
    if item is None:
        raise ApiError(404, "not_found", f"no operation is called {name!r}")
    return item


@bp.get("/pauses")
def list_pauses():
    """Every pausable operation name, whether it is paused, by whom, and how many operations wait."""
    return jsonify(pauses=[_pause_json(item) for item in pauses.list_pauses()])


@bp.post("/pauses/<name>/pause")
def pause(name: str):
    """Hold ``name``: new operations are stored and wait. Body ``{"note": "..."}`` (optional)."""
    note = _note(_json_body())
    _find(name)
    try:
        item = pauses.pause(name, _actor(), note)
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(item))


@bp.post("/pauses/<name>/resume")
def resume(name: str):
    """Resume ``name``: its waiting operations are rung oldest first."""
    _find(name)
    try:
        rung = pauses.resume(name, _actor())
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(_find(name)), rung=rung)
