"""Roll-ups: the counts of operations that cleanup deletes, kept so /metrics counters never go down.

Cleanup adds a batch's counters and duration buckets to ``metric_rollups`` (in the batch's own
transaction) before deleting it; the Prometheus collector adds the roll-ups to the live counts.
"""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webapp.domain.states import State
from webapp.extensions import db
from webapp.models import MetricRollup, Operation, OperationAttempt

# Attempt duration buckets in seconds (upper bounds; +Inf is added).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FAILED_OUTCOMES = ("failed", "dead", "crashed")


def bucket_label(bound: float) -> str:
    """A histogram bucket's ``le`` label."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def operation_counters(*conditions, attempt_conditions=()) -> dict[tuple[str, str, str], int]:
    """``{(metric, kind, name): count}`` for created, succeeded, failed and dead_lettered.

    ``attempt_conditions`` narrow the attempts side directly (by ``operation_id``), so a batch
    of ids is looked up through the attempts index instead of a scan of the whole table.
    """
    counts: dict[tuple[str, str, str], int] = {}
    rows = db.session.execute(
        select(
            Operation.kind,
            Operation.name,
            func.count(),
            func.sum(case((Operation.state == State.SUCCEEDED.value, 1), else_=0)),
        )
        .where(*conditions)
        .group_by(Operation.kind, Operation.name)
    ).all()
    for kind, name, created, succeeded in rows:
        counts[("created", kind, name)] = int(created)
        counts[("succeeded", kind, name)] = int(succeeded or 0)
    attempts = db.session.execute(
        select(
            Operation.kind,
            Operation.name,
            func.sum(case((OperationAttempt.outcome.in_(FAILED_OUTCOMES), 1), else_=0)),
            func.sum(case((OperationAttempt.outcome == "dead", 1), else_=0)),
        )
        .join(Operation, Operation.id == OperationAttempt.operation_id)
        .where(*conditions, *attempt_conditions)
        .group_by(Operation.kind, Operation.name)
    ).all()
    for kind, name, failed, dead in attempts:
        counts[("failed", kind, name)] = int(failed or 0)
        counts[("dead_lettered", kind, name)] = int(dead or 0)
    return counts


def duration_histogram(*conditions, attempt_conditions=()) -> dict[tuple[str, str], int]:
    """``{(kind, bucket label): cumulative count}`` plus ``(kind, "sum_ms")`` and ``(kind, "count")``."""
    bounds = list(DURATION_BUCKETS)
    columns = [func.sum(case((OperationAttempt.duration_ms <= int(bound * 1000), 1), else_=0)) for bound in bounds]
    rows = db.session.execute(
        select(
            Operation.kind, func.count(OperationAttempt.duration_ms), func.sum(OperationAttempt.duration_ms), *columns
        )
        .join(Operation, Operation.id == OperationAttempt.operation_id)
        .where(OperationAttempt.duration_ms.is_not(None), *conditions, *attempt_conditions)
        .group_by(Operation.kind)
    ).all()
    result: dict[tuple[str, str], int] = {}
    for kind, count, total_ms, *cumulative in rows:
        for bound, value in zip(bounds, cumulative, strict=True):
            result[(kind, bucket_label(bound))] = int(value or 0)
        result[(kind, "+Inf")] = int(count)
        result[(kind, "count")] = int(count)
        result[(kind, "sum_ms")] = int(total_ms or 0)
    return result


def add_to_rollups(values: dict[tuple[str, str, str, str], int]) -> None:
    """Add ``{(metric, kind, name, label): delta}`` to the roll-ups in the caller's transaction."""
    if not values:
        return
    insert = pg_insert if db.session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(MetricRollup.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=[MetricRollup.metric, MetricRollup.kind, MetricRollup.name, MetricRollup.label],
        set_={"value": MetricRollup.__table__.c.value + statement.excluded.value},
    )
    # One executemany, not a statement per row: it runs inside a cleanup batch that holds the
    # write lock. Zeros are stored too, so a series keeps existing after its rows are gone.
    db.session.execute(
        statement,
        [
            {"metric": metric, "kind": kind, "name": name, "label": label, "value": delta}
            for (metric, kind, name, label), delta in sorted(values.items())
        ],
    )


def roll_up_operations(ids: list[int]) -> None:
    """Carry the counters and histogram of operations about to be deleted into the roll-ups."""
    condition, by_attempt = Operation.id.in_(ids), (OperationAttempt.operation_id.in_(ids),)
    values = {
        (metric, kind, name, ""): count
        for (metric, kind, name), count in operation_counters(condition, attempt_conditions=by_attempt).items()
    }
    values.update(
        {
            ("attempt_duration", kind, "", label): count
            for (kind, label), count in duration_histogram(condition, attempt_conditions=by_attempt).items()
        }
    )
    add_to_rollups(values)


def read_rollups() -> dict[tuple[str, str, str, str], int]:
    """Every roll-up: ``{(metric, kind, name, label): value}``."""
    rows = db.session.execute(
        select(MetricRollup.metric, MetricRollup.kind, MetricRollup.name, MetricRollup.label, MetricRollup.value)
    ).all()
    return {(metric, kind, name, label): int(value) for metric, kind, name, label, value in rows}
