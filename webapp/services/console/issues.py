"""Issues: failures grouped by their stored error fingerprint, counted in SQL over every match."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import case, func, select, true

from webapp.domain.fingerprints import normalise_error
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.filters import DEAD, NO_FINGERPRINT, Filters, filter_conditions

ISSUES_SHOWN = 200


@dataclass
class Issue:
    """Failures that share a fingerprint."""

    fingerprint: str
    error_class: str | None = None
    sample: str = ""
    names: set = field(default_factory=set)
    count: int = 0
    unresolved: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass
class IssueList:
    """The Issues view: the largest groups, and how many groups there are in all."""

    issues: list
    total_groups: int
    total_failures: int


def fingerprint_text(fingerprint: str) -> str:
    """A fingerprint as people read it: its error class and normalised message (for filter chips)."""
    if not fingerprint or fingerprint == NO_FINGERPRINT:
        return "(no error recorded)"
    sample = db.session.execute(
        select(Operation.error_class, Operation.error_message)
        .where(DEAD, Operation.error_fingerprint == fingerprint)
        .order_by(Operation.dead_at.desc())
        .limit(1)
    ).first()
    db.session.rollback()
    if sample is None:
        return f"unknown error {fingerprint[:12]}…"
    message = normalise_error(sample.error_message)
    return f"{sample.error_class}: {message}" if sample.error_class else message


def group_failures(filters: Filters, now: datetime | None = None, shown: int = ISSUES_SHOWN) -> IssueList:
    """Dead operations matching ``filters`` grouped by stored fingerprint, largest group first.

    Grouped in SQL over every matching row (the partial index on dead operations covers the
    grouping); only the ``shown`` largest groups are returned, each with a sample message.
    """
    if not filters.dead_only:
        filters = replace(filters, status="unresolved")
    # The status is applied inside the aggregates, not in WHERE: every dead row is then read from
    # the covering index ix_operations_dead_issues in group order. (SQLite, given a resolved_at
    # condition, prefers the (state, resolved_at) index and reads each row from the table.)
    match = {"unresolved": Operation.resolved_at.is_(None), "resolved": Operation.resolved_at.is_not(None)}
    matches = match.get(filters.status, true())
    rows = db.session.execute(
        select(
            Operation.error_fingerprint,
            Operation.name,
            func.sum(case((matches, 1), else_=0)).label("count"),
            func.sum(case((matches & Operation.resolved_at.is_(None), 1), else_=0)).label("unresolved"),
            func.min(case((matches, Operation.dead_at))).label("first_seen"),
            func.max(case((matches, Operation.dead_at))).label("last_seen"),
        )
        .where(*filter_conditions(replace(filters, status="all"), now))
        .group_by(Operation.error_fingerprint, Operation.name)
    ).all()
    groups: dict[str, Issue] = {}
    for row in rows:
        if not row.count:
            continue
        fingerprint = row.error_fingerprint or NO_FINGERPRINT
        issue = groups.setdefault(fingerprint, Issue(fingerprint))
        issue.count += row.count
        issue.unresolved += int(row.unresolved or 0)
        issue.names.add(row.name)
        issue.first_seen = min(filter(None, [issue.first_seen, row.first_seen]), default=None)
        issue.last_seen = max(filter(None, [issue.last_seen, row.last_seen]), default=None)
    ordered = sorted(groups.values(), key=lambda issue: (-issue.count, issue.fingerprint))
    top = ordered[:shown]
    for issue in top:
        if issue.fingerprint == NO_FINGERPRINT:
            issue.sample = "(no error recorded)"
            continue
        sample = db.session.execute(
            select(Operation.error_class, Operation.error_message)
            .where(DEAD, Operation.error_fingerprint == issue.fingerprint)
            .order_by(Operation.dead_at.desc())
            .limit(1)
        ).first()
        if sample is not None:
            issue.error_class, issue.sample = sample.error_class, normalise_error(sample.error_message)
    db.session.rollback()
    return IssueList(top, len(groups), sum(issue.count for issue in groups.values()))
