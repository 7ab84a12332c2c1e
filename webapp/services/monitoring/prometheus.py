"""Prometheus metrics computed from the database at scrape time.

Every value is read from the database when ``/metrics`` is scraped (a custom collector),
never kept in process memory, so any gunicorn worker answers the same numbers: the
database is the only state, which makes the output multi-process-correct by construction
(no ``prometheus_multiproc_dir``, no per-worker counters to merge). Counters are table
counts plus ``metric_rollups`` (what cleanup deleted), so they never go down.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from webapp.domain.states import CLAIMABLE, State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import MetricRollup, Operation, OperationAttempt, OperationPause, StripeEvent
from webapp.services.engine.doorbell import get_doorbell

# Attempt duration buckets in seconds (upper bounds; +Inf is added).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FAILED_OUTCOMES = ("failed", "dead", "crashed")
CIRCUIT_STATES = ("closed", "open", "half_open")
COUNTERS = ("created", "succeeded", "failed", "dead_lettered")


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


# --- aggregations (shared with cleanup, which rolls deleted rows up) ---------------------------


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
        for bound, value in zip(bounds, cumulative):
            result[(kind, _bucket_label(bound))] = int(value or 0)
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


def _rollups() -> dict[tuple[str, str, str, str], int]:
    rows = db.session.execute(
        select(MetricRollup.metric, MetricRollup.kind, MetricRollup.name, MetricRollup.label, MetricRollup.value)
    ).all()
    return {(metric, kind, name, label): int(value) for metric, kind, name, label, value in rows}


# --- the collector ------------------------------------------------------------------------------


class DatabaseCollector:
    """A prometheus_client collector whose every sample is read from the database per scrape."""

    def __init__(self, config: Mapping, *, now: datetime | None = None):
        self.config = config
        self.now = now

    def collect(self):
        """Yield every metric family (called by ``generate_latest``)."""
        now = self.now or utcnow()
        try:
            rollups = _rollups()
            yield from self._operation_counters(rollups)
            yield self._duration_histogram(rollups)
            yield from self._webhook_intake()
            yield from self._gauges(now)
            yield from self._job_heartbeats(now)
            yield from self._circuits(now)
            yield from self._queue()
        finally:
            db.session.rollback()  # reads only; never hold a transaction open

    def _operation_counters(self, rollups):
        live = operation_counters()
        docs = {
            "created": "Operations created",
            "succeeded": "Operations that succeeded",
            "failed": "Failed attempts (failed, crashed or dead-lettering)",
            "dead_lettered": "Attempts that dead-lettered their operation",
        }
        # Every counter has a series (0 if need be) for every kind and name seen: a name whose
        # operations never ran yet still shows failed_total 0, so its first failure is a rise.
        keys = {(kind, name) for (_, kind, name) in live}
        keys |= {(kind, name) for (m, kind, name, _) in rollups if m in COUNTERS}
        for metric in COUNTERS:
            family = CounterMetricFamily(f"backstop_operations_{metric}", docs[metric], labels=["kind", "name"])
            for kind, name in sorted(keys):
                family.add_metric(
                    [kind, name], live.get((metric, kind, name), 0) + rollups.get((metric, kind, name, ""), 0)
                )
            yield family

    def _duration_histogram(self, rollups):
        live = duration_histogram()
        family = HistogramMetricFamily(
            "backstop_operation_attempt_duration_seconds", "Duration of finished operation attempts", labels=["kind"]
        )
        kinds = {kind for kind, _ in live} | {kind for (m, kind, _, _) in rollups if m == "attempt_duration"}
        labels = [_bucket_label(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
        for kind in sorted(kinds):

            def total(label):
                return live.get((kind, label), 0) + rollups.get(("attempt_duration", kind, "", label), 0)

            family.add_metric([kind], [(label, total(label)) for label in labels], sum_value=total("sum_ms") / 1000.0)
        return family

    def _webhook_intake(self):
        from webapp.services.payments.intake import REASONS, rejection_counts

        accepted = CounterMetricFamily(
            "backstop_webhook_events_accepted", "Stripe events verified and stored", labels=["type"]
        )
        for event_type, count in db.session.execute(
            select(StripeEvent.type, func.count()).group_by(StripeEvent.type).order_by(StripeEvent.type)
        ).all():
            accepted.add_metric([event_type], count)
        yield accepted
        rejected = CounterMetricFamily(
            "backstop_webhook_deliveries_rejected", "Webhook deliveries refused", labels=["reason"]
        )
        counts = rejection_counts()
        for reason in sorted(set(REASONS) | set(counts)):
            rejected.add_metric([reason], counts.get(reason, 0))
        yield rejected

    def _gauges(self, now):
        by_state = GaugeMetricFamily("backstop_operations", "Operations by current state", labels=["state"])
        states = dict(db.session.execute(select(Operation.state, func.count()).group_by(Operation.state)).all())
        for state in State:
            by_state.add_metric([state.value], states.get(state.value, 0))
        yield by_state
        unresolved = GaugeMetricFamily(
            "backstop_dead_letters_unresolved", "Dead operations nobody resolved", labels=["kind"]
        )
        for kind, count in db.session.execute(
            select(Operation.kind, func.count())
            .where(Operation.state == State.DEAD.value, Operation.resolved_at.is_(None))
            .group_by(Operation.kind)
            .order_by(Operation.kind)
        ).all():
            unresolved.add_metric([kind], count)
        yield unresolved
        oldest = db.session.execute(
            select(func.min(Operation.next_attempt_at)).where(
                Operation.state.in_([s.value for s in CLAIMABLE]), Operation.next_attempt_at <= now
            )
        ).scalar()
        yield GaugeMetricFamily(
            "backstop_oldest_due_age_seconds",
            "Age of the oldest due, unclaimed operation",
            value=0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0),
        )
        paused = GaugeMetricFamily(
            "backstop_operations_paused", "Operation names on hold (1 = paused)", labels=["name"]
        )
        for name in db.session.execute(select(OperationPause.name).order_by(OperationPause.name)).scalars():
            paused.add_metric([name], 1)
        yield paused

    def _job_heartbeats(self, now):
        """Every configured job, judged as /healthz and the job_stale alert judge it."""
        from webapp.services.schedule import job_heartbeats  # schedule -> maintenance -> this module

        age = GaugeMetricFamily(
            "backstop_periodic_job_heartbeat_age_seconds",
            "Seconds since each periodic job last finished a run (NaN: never)",
            labels=["job"],
        )
        stale = GaugeMetricFamily("backstop_periodic_job_stale", "1 when a job's heartbeat is stale", labels=["job"])
        for beat in sorted(job_heartbeats(self.config, now), key=lambda beat: beat["name"]):
            seconds = beat["heartbeat_age_seconds"]
            age.add_metric([beat["name"]], float("nan") if seconds is None else float(seconds))
            stale.add_metric([beat["name"]], 0 if beat["fresh"] else 1)
        yield age
        yield stale

    def _circuits(self, now):
        from webapp.services.email.circuits import circuit_states

        family = GaugeMetricFamily(
            "backstop_email_circuit_state",
            "Email provider circuit breaker state (1 for the current state)",
            labels=["provider", "state"],
        )
        for circuit in circuit_states(now):
            for state in CIRCUIT_STATES:
                family.add_metric([circuit["provider"], state], 1 if circuit["state"] == state else 0)
        yield family

    def _queue(self):
        up = GaugeMetricFamily("backstop_queue_up", "1 when the queue (Huey) answered")
        depth = GaugeMetricFamily(
            "backstop_queue_depth", "Messages waiting in the queue (doorbell depth)", labels=["queue"]
        )
        try:
            counts = get_doorbell().depth()
        except Exception:  # an unreachable queue is a value, not a failed scrape
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, count in sorted(counts.items()):
                depth.add_metric([queue], count)
        yield up
        yield depth
