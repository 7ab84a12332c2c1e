"""Exports of the filtered set, streamed as CSV (formula-safe) or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import datetime

from webapp.domain.time import iso, utcnow
from webapp.models import Operation
from webapp.services.console.failures import list_operations
from webapp.services.console.filters import Filters

EXPORT_FIELDS = (
    "id",
    "kind",
    "name",
    "state",
    "subject",
    "idempotency_key",
    "attempts",
    "max_attempts",
    "error_class",
    "error_kind",
    "error_message",
    "created_at",
    # A scheduled operation's run time (set at creation or by a reschedule), and when it may next
    # be claimed (for a retrying one, its next attempt; for a scheduled one, the same as run_at).
    "run_at",
    "next_attempt_at",
    "last_attempt_at",
    "dead_at",
    "resolved_at",
    "resolved_by",
    "resolution_note",
    "payload",
)


def operation_record(operation: Operation, timestamp: Callable[[datetime], str] = iso) -> dict:
    """An operation as a JSON-safe dict (the export's and the API's shape), times ISO 8601 UTC with ``Z`` by default."""
    record = {}
    for name in EXPORT_FIELDS:
        value = getattr(operation, name)
        record[name] = timestamp(value) if isinstance(value, datetime) else value
    record["fingerprint"] = operation.error_fingerprint
    return record


def iter_matching(filters: Filters, now: datetime | None = None, batch: int = 500) -> Iterator[Operation]:
    """Every operation matching ``filters``, newest first, fetched in keyset batches."""
    cursor = None
    now = now or utcnow()
    while True:
        page = list_operations(filters, cursor=cursor, limit=batch, now=now)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def export_csv(filters: Filters, now: datetime | None = None) -> Iterator[str]:
    """The filtered set as CSV text chunks (header first), payload as a JSON column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow((*EXPORT_FIELDS, "fingerprint"))
    for operation in iter_matching(filters, now):
        record = operation_record(operation)
        record["payload"] = json.dumps(record["payload"], sort_keys=True, default=str)
        writer.writerow([_csv_safe(record[name]) for name in (*EXPORT_FIELDS, "fingerprint")])
        if buffer.tell() > 32_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value):
    # A cell starting with = + - @ is a formula to spreadsheets: prefix it so it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


def export_json(filters: Filters, now: datetime | None = None) -> Iterator[str]:
    """The filtered set as one JSON array, streamed a record at a time."""
    yield "["
    first = True
    for operation in iter_matching(filters, now):
        yield ("" if first else ",") + "\n" + json.dumps(operation_record(operation), default=str)
        first = False
    yield "\n]\n"
