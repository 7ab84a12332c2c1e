"""The admin API's routes: operations, bulk retry, pauses, and seed 003's read-only views."""

from __future__ import annotations

import re
from datetime import datetime

from flask import current_app, g, jsonify, request

from webapp.blueprints.admin_api.blueprint import bp
from webapp.blueprints.json_api import ApiError, BadText, MalformedJson, iso, parse_json_object
from webapp.domain.time import as_naive_utc, utcnow
from webapp.services.console import audit, bulk, explorer, failures
from webapp.services.console.export import operation_record
from webapp.services.console.filters import MAX_ID, FilterError, Filters, parse_filters
from webapp.services.engine import operations, pauses
from webapp.services.monitoring import health_page, liveness

MAX_LIMIT = 500
# Ids in URLs: integers that fit the BIGINT columns (a larger one is a 404, not a database error).
ID = f"int(max={MAX_ID})"


def _actor() -> str:
    return f"token:{g.api_token.name}"


def _address() -> str:
    """The client address for the audit log: the log-in throttle's source (proxies per TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


def _attempts(body: dict) -> int:
    """The body's ``attempts`` (more attempts a retry grants): 1 when absent, else an integer from 1 to 20."""
    attempts = body.get("attempts", 1)
    try:
        return operations.checked_attempts(attempts)
    except operations.InvalidArgument as exc:
        raise ApiError(400, "invalid_attempts", str(exc), field="attempts") from None


def _run_at(body: dict) -> datetime:
    """The body's ``run_at``: an ISO 8601 date-time (UTC when it names no zone); 400 ``invalid_run_at`` otherwise."""
    raw = body.get("run_at")
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(400, "invalid_run_at", "run_at must be an ISO 8601 date-time string", field="run_at")
    try:
        return as_naive_utc(datetime.fromisoformat(raw.strip()[:40].replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise ApiError(
            400, "invalid_run_at", f"run_at is not an ISO 8601 date-time: {raw[:40]!r}", field="run_at"
        ) from None


def _filters(args, *, explorer: bool | None = False) -> Filters:
    try:
        return parse_filters(args, explorer=explorer)
    except FilterError as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from None


def _limit(default: int = 50) -> int:
    raw = request.args.get("limit", str(default))
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _json_body() -> dict:
    """The body's JSON object (``{}`` when empty); 400 ``invalid_json``, naming the field if one is bad."""
    raw = request.get_data(cache=False)
    if not raw:
        return {}
    try:
        return parse_json_object(raw)
    except BadText as exc:
        raise ApiError(400, "invalid_json", str(exc), field=exc.field) from None
    except MalformedJson as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


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
    record["result"] = detail["operation"].result
    # Every admin action on it, oldest first: a resolve never hides the retry before it.
    record["admin_actions"] = [audit.entry_record(entry) for entry in audit.entries_for("operation", str(operation_id))]
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
    record["email_log"] = [email_log_json(e) for e in detail["emails"]]
    return record


def email_log_json(entry) -> dict:
    """One email-log row as the admin API shows it."""
    return {
        "created_at": iso(entry.created_at),
        "to": entry.to_address,
        "template": entry.template,
        "provider": entry.provider,
        "status": entry.status,
        "provider_message_id": entry.provider_message_id,
        "error": entry.error,
    }


def _job_json(job) -> dict:
    return {
        "id": job.id,
        "action": job.action,
        "params": job.params,
        "state": job.state,
        "filters": Filters.from_json(job.filters or {}).to_json(),
        "total": job.total,
        "processed": job.processed,
        "retried": job.succeeded if job.action == "retry" else 0,
        "changed": job.succeeded,
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
    """Operations matching the console's filters, keyset-paginated (``cursor`` from the last page).

    With ``state`` (any state, or empty for every state) or ``search``, the explorer's filters and
    search, newest created first; otherwise the failed-operations page's ``status`` (dead letters).
    """
    filters = _filters(request.args, explorer=None)
    try:
        page = failures.list_operations(filters, cursor=request.args.get("cursor"), limit=_limit())
    except FilterError as exc:
        code = "invalid_cursor" if request.args.get("cursor") and "cursor" in str(exc) else "invalid_filter"
        raise ApiError(400, code, str(exc)) from None
    return jsonify(
        operations=[{**operation_record(op, iso), "result": op.result} for op in page.rows],
        next_cursor=page.next_cursor,
        filters=filters.to_json(),
    )


@bp.get(f"/operations/<{ID}:operation_id>")
def get_operation(operation_id: int):
    """One operation with its attempts, result, related purchase, customer and email log, the other
    operations about its subject and the Stripe events behind them (the explorer's permalink as JSON)."""
    record = _operation_json(operation_id)
    operation = failures.get_operations([operation_id])[0]
    related = explorer.related_operations(operation)
    record["related_operations"] = [
        {"id": op.id, "name": op.name, "state": op.state, "created_at": iso(op.created_at)} for op in related
    ]
    record["stripe_events"] = [
        {**event, "received_at": iso(event["received_at"])} for event in explorer.stripe_events(operation, related)
    ]
    return jsonify(record)


def _act(operation_id: int, action, audited: str, **fields):
    """Do ``action`` on one operation, recorded in the audit log as ``audited``; the operation after it."""
    try:
        with audit.recorded(
            audited,
            actor=_actor(),
            target_type="operation",
            target_id=str(operation_id),
            address=_address(),
            **fields,
        ):
            action()
    except operations.InvalidArgument as exc:
        raise ApiError(400, "invalid_run_at", str(exc), field="run_at") from None
    except operations.OperationNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except operations.OperationError as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None
    return jsonify(_operation_json(operation_id))


@bp.post(f"/operations/<{ID}:operation_id>/retry")
def retry(operation_id: int):
    """Retry a dead operation; body ``{"attempts": N}`` (optional, 1 to 20) grants N more attempts."""
    attempts = _attempts(_json_body())
    return _act(
        operation_id,
        lambda: operations.retry_dead(operation_id, by=_actor(), extra_attempts=attempts),
        "operation.retry",
        details={"attempts": attempts},
    )


@bp.post(f"/operations/<{ID}:operation_id>/resolve")
def resolve(operation_id: int):
    """Resolve a dead operation; body ``{"note": "..."}`` (a note over the limit is refused)."""
    note = _note(_json_body())
    return _act(
        operation_id,
        lambda: operations.resolve(operation_id, by=_actor(), note=note),
        "operation.resolve",
        note=operations.checked_note(note),
    )


@bp.post(f"/operations/<{ID}:operation_id>/cancel")
def cancel(operation_id: int):
    """Cancel an operation that has not started."""
    return _act(operation_id, lambda: operations.cancel(operation_id, by=_actor()), "operation.cancel")


@bp.post(f"/operations/<{ID}:operation_id>/run-now")
def run_now(operation_id: int):
    """Make a scheduled or retrying operation due now and ring the worker (409 in any other state)."""
    return _act(operation_id, lambda: operations.run_now(operation_id), "operation.run_now")


@bp.post(f"/operations/<{ID}:operation_id>/reschedule")
def reschedule(operation_id: int):
    """Move a scheduled or retrying operation to ``{"run_at": "<ISO time>"}`` (future, within a year)."""
    run_at = _run_at(_json_body())
    return _act(
        operation_id,
        lambda: operations.reschedule_waiting(operation_id, run_at),
        "operation.reschedule",
        details={"run_at": run_at},
    )


def _bulk(action: str):
    """Snapshot the operations matching ``{"filters": {...}}`` now and do ``action`` to them in the background."""
    body = _json_body()
    raw = body.get("filters", {})
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_filter", "filters must be a JSON object")
    filters = _filters({key: str(value) for key, value in raw.items() if value is not None})
    run_at = _run_at(body) if action == "reschedule" else None
    try:
        job = bulk.create_draft(filters, by=_actor(), action=action, run_at=run_at)
        if job.total:
            job = bulk.start(job.id, by=_actor(), address=_address())
        else:
            job = bulk.cancel(job.id, by=_actor(), address=_address())
    except bulk.BulkError as exc:
        raise ApiError(400, "invalid_bulk", str(exc)) from None
    return jsonify(bulk_job=_job_json(job)), 202


@bp.post("/operations/bulk-retry")
def bulk_retry():
    """Snapshot the dead operations matching ``{"filters": {...}}`` now and retry them in the background."""
    return _bulk("retry")


@bp.post("/operations/bulk-run-now")
def bulk_run_now():
    """Snapshot the waiting operations matching ``{"filters": {...}}`` (scheduled, retrying, due); run them now."""
    return _bulk("run_now")


@bp.post("/operations/bulk-reschedule")
def bulk_reschedule():
    """Snapshot the waiting operations matching ``{"filters": {...}}`` and move them to ``run_at``."""
    return _bulk("reschedule")


@bp.post("/operations/bulk-cancel")
def bulk_cancel():
    """Snapshot the waiting operations matching ``{"filters": {...}}`` and cancel them."""
    return _bulk("cancel")


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
        return jsonify(bulk_job=_job_json(bulk.cancel(job_id, by=_actor(), address=_address())))
    except bulk.BulkJobNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except bulk.BulkError as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None


# --- seed 003's views ---------------------------------------------------------------------


@bp.get("/liveness")
def liveness_details():
    """/healthz in full: each part's error class, each job's heartbeat age, runs and last error."""
    now = utcnow()
    healthy, report = liveness.check(now, current_app.config)
    return jsonify({"healthy": healthy, **report, "consumers": liveness.consumer_report(now, current_app.config)})


@bp.get("/consumers")
def consumers():
    """Every consumer process: live, lost or stopped, with the operations it is running."""
    return jsonify(liveness.consumer_report(utcnow(), current_app.config))


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
            "run_at": iso(op.run_at),
            "next_attempt_at": iso(op.next_attempt_at),
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
        with audit.recorded(
            "pause", actor=_actor(), target_type="operation_name", target_id=name, note=note or None, address=_address()
        ):
            item = pauses.pause(name, _actor(), note)
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(item))


@bp.post("/pauses/<name>/resume")
def resume(name: str):
    """Resume ``name``: its waiting operations are rung oldest first."""
    _find(name)
    try:
        with audit.recorded("resume", actor=_actor(), target_type="operation_name", target_id=name, address=_address()):
            rung = pauses.resume(name, _actor())
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(_find(name)), rung=rung)


# --- audit log ------------------------------------------------------------------------------


def filtered_page(parse, list_page):
    """The query's filters and one keyset page of what they match: 400 ``invalid_filter``, then
    ``invalid_limit``, then ``invalid_cursor``, each naming the problem."""
    try:
        filters = parse(request.args)
    except FilterError as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from None
    limit = _limit()
    try:
        page = list_page(filters, cursor=request.args.get("cursor"), limit=limit)
    except FilterError as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return filters, page


@bp.get("/audit-log")
def audit_log():
    """Audit entries, newest first, filtered by ``action``, ``actor``, ``target`` (TYPE or TYPE:ID) and time."""
    filters, page = filtered_page(audit.parse_audit_filters, audit.list_entries)
    return jsonify(
        entries=[audit.entry_record(e) for e in page.rows], next_cursor=page.next_cursor, filters=filters.to_json()
    )
