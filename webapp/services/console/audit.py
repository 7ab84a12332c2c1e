"""The audit log: who did what, when, to what, why, and from which address. Append-only.

:func:`record` adds a row to the caller's transaction without committing, so an action and
its audit row commit together (or neither does). Nothing here, or anywhere, updates a row;
cleanup deletes rows older than ``RETENTION_AUDIT_DAYS``. Nothing here touches the request:
the blueprint passes the actor and the client address down.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime

from sqlalchemy import and_, or_, select

from webapp.domain.text import text_problem
from webapp.domain.time import iso, utcnow
from webapp.extensions import db
from webapp.models import AuditEntry
from webapp.services.console.failures import Page, decode_cursor, encode_cursor
from webapp.services.console.filters import RANGES, FilterError, _parse_time

# Every action the log knows, grouped by what it acts on (the page's action filter lists these).
ACTIONS = (
    "operation.retry",
    "operation.resolve",
    "operation.cancel",
    "operation.run_now",
    "operation.reschedule",
    "bulk_job.start",
    "bulk_job.cancel",
    "bulk_job.result",
    "stripe_event.replay",
    "pause",
    "resume",
    "login",
    "login.failed",
    "logout",
    "admin.create",
    "admin.set_password",
    "token.create",
    "token.revoke",
)
TARGET_TYPES = ("operation", "bulk_job", "stripe_event", "operation_name", "admin", "api_token")

# Column sizes: a value that does not fit is cut (an audit row must never fail its action).
_LIMITS = {"actor": 255, "action": 40, "target_type": 40, "target_id": 120, "address": 64}
_TARGET = re.compile(r"(?P<type>[a-z_]{1,40})(?::(?P<id>.{1,120}))?", re.DOTALL)


def record(
    action: str,
    *,
    actor: str | None,
    target_type: str | None = None,
    target_id: str | None = None,
    note: str | None = None,
    address: str | None = None,
    details: dict | None = None,
) -> None:
    """Add an audit row to the current transaction; the caller's commit stores it with the action."""
    db.session.add(
        AuditEntry(
            created_at=utcnow(),
            action=_clean(action, "action"),
            actor=_clean(actor, "actor"),
            target_type=_clean(target_type, "target_type"),
            target_id=_clean(None if target_id is None else str(target_id), "target_id"),
            note=_clean(note),
            address=_clean(address, "address"),
            details=_json_safe(details) if details else None,
        )
    )


@contextmanager
def recorded(action: str, **fields) -> Iterator[None]:
    """Record ``action`` for the block's own commit; if the block fails, its transaction (and the row) is rolled back.

    For services that commit inside (the engine's admin actions): the row is pending when they
    commit, so it is stored with their change; a refused action stores nothing.
    """
    record(action, **fields)
    try:
        yield
    except BaseException:
        db.session.rollback()
        raise


def entries_for(target_type: str, target_id: str) -> list[AuditEntry]:
    """Every entry about one target, oldest first (an operation's timeline)."""
    rows = (
        db.session.execute(
            select(AuditEntry)
            .where(AuditEntry.target_type == target_type, AuditEntry.target_id == str(target_id))
            .order_by(AuditEntry.created_at, AuditEntry.id)
        )
        .scalars()
        .all()
    )
    _detach(rows)
    return list(rows)


# --- the page's and the API's filters ------------------------------------------------------


@dataclass(frozen=True)
class AuditFilters:
    """The audit log's filters, as they appear in the URL."""

    action: str = ""
    actor: str = ""
    target: str = ""  # "operation" or "operation:42"
    range: str = "all"
    since: datetime | None = None
    until: datetime | None = None

    def to_args(self) -> dict:
        """The non-default filters as URL query arguments."""
        args = {}
        for key, value in asdict(self).items():
            if value not in (None, "") and value != getattr(AuditFilters, key):
                args[key] = value.isoformat(timespec="minutes") if isinstance(value, datetime) else value
        return args

    def without(self, key: str) -> dict:
        """These filters' URL arguments with ``key`` back at its default (a chip's ×)."""
        args = self.to_args()
        args.pop(key, None)
        return args

    def to_json(self) -> dict:
        """All filters as JSON-safe values (times in UTC ending in ``Z``)."""
        return {key: (iso(value) if isinstance(value, datetime) else value) for key, value in asdict(self).items()}


def parse_audit_filters(args: Mapping[str, str]) -> AuditFilters:
    """Validate the audit filters from a mapping of strings; :class:`FilterError` names the bad one."""
    action = (args.get("action") or "").strip()
    if action and action not in ACTIONS:
        raise FilterError(f"action must be one of {', '.join(ACTIONS)}")
    actor = (args.get("actor") or "").strip()
    if len(actor) > _LIMITS["actor"]:
        raise FilterError(f"actor is limited to {_LIMITS['actor']} characters")
    target = (args.get("target") or "").strip()
    match = _TARGET.fullmatch(target) if target else None
    if target and (match is None or match["type"] not in TARGET_TYPES):
        raise FilterError(f"target must be TYPE or TYPE:ID, TYPE one of {', '.join(TARGET_TYPES)}")
    for label, value in (("actor", actor), ("target", target)):
        if problem := text_problem(value):
            raise FilterError(f"{label} {problem}")
    range_ = (args.get("range") or "all").strip()
    if range_ not in RANGES:
        raise FilterError(f"range must be one of {', '.join(RANGES)}")
    filters = AuditFilters(
        action=action,
        actor=actor,
        target=target,
        range=range_,
        since=_parse_time(args.get("since"), "since"),
        until=_parse_time(args.get("until"), "until"),
    )
    if filters.since and filters.until and filters.since > filters.until:
        raise FilterError("since must not be later than until")
    return filters


def _conditions(filters: AuditFilters, now: datetime) -> list:
    conditions = []
    if filters.action:
        conditions.append(AuditEntry.action == filters.action)
    if filters.actor:
        conditions.append(AuditEntry.actor == filters.actor)
    if filters.target:
        target_type, _, target_id = filters.target.partition(":")
        conditions.append(AuditEntry.target_type == target_type)
        if target_id:
            conditions.append(AuditEntry.target_id == target_id)
    window = RANGES[filters.range]
    if filters.range == "today":
        conditions.append(AuditEntry.created_at >= now.replace(hour=0, minute=0, second=0, microsecond=0))
    elif window is not None:
        conditions.append(AuditEntry.created_at >= now - window)
    if filters.since:
        conditions.append(AuditEntry.created_at >= filters.since)
    if filters.until:
        conditions.append(AuditEntry.created_at <= filters.until)
    return conditions


def list_entries(
    filters: AuditFilters, *, cursor: str | None = None, limit: int = 50, now: datetime | None = None
) -> Page:
    """A page of entries matching ``filters``, newest first, keyset-paginated by (created_at, id)."""
    query = select(AuditEntry).where(*_conditions(filters, now or utcnow()))
    after = decode_cursor(cursor)
    if after is not None:
        stamp, last_id = after
        query = query.where(
            or_(AuditEntry.created_at < stamp, and_(AuditEntry.created_at == stamp, AuditEntry.id < last_id))
        )
    rows = (
        db.session.execute(query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(limit + 1))
        .scalars()
        .all()
    )
    _detach(rows)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(rows, next_cursor, filters)


def entry_record(entry: AuditEntry) -> dict:
    """An entry as JSON (the API's shape), its time ISO 8601 UTC with ``Z``."""
    return {
        "id": entry.id,
        "at": iso(entry.created_at),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "note": entry.note,
        "address": entry.address,
        "details": entry.details,
    }


def actors() -> list[str]:
    """Everyone who appears in the log, for the actor filter's suggestions (bounded)."""
    names = (
        db.session.execute(
            select(AuditEntry.actor)
            .where(AuditEntry.actor.is_not(None))
            .distinct()
            .order_by(AuditEntry.actor)
            .limit(200)
        )
        .scalars()
        .all()
    )
    db.session.rollback()
    return list(names)


# --- helpers ------------------------------------------------------------------------------


def _clean(value: str | None, column: str | None = None) -> str | None:
    """Text every database can store: NUL and lone surrogates replaced, cut to the column's size."""
    if value is None:
        return None
    value = str(value).replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value[: _LIMITS[column]] if column else value


def _json_safe(value):
    """``details`` as JSON: times as ISO strings, text cleaned, anything else as its text."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean(str(value))


def _detach(rows) -> None:
    """Detach loaded rows and end the read transaction (on SQLite a transaction holds the write lock)."""
    for row in rows:
        if row in db.session:
            db.session.expunge(row)
    db.session.rollback()
