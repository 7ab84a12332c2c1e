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
from sqlalchemy import func, select

from webapp.domain.states import CLAIMABLE, State
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation, OperationPause, StripeEvent
from webapp.services.email.circuits import circuit_states
from webapp.services.engine import periodic
from webapp.services.engine.doorbell import get_doorbell
from webapp.services.monitoring.rollups import (
    DURATION_BUCKETS,
    bucket_label,
    duration_histogram,
    operation_counters,
    read_rollups,
)
from webapp.services.payments.intake import REASONS, rejection_counts

CIRCUIT_STATES = ("closed", "open", "half_open")
COUNTERS = ("created", "succeeded", "failed", "dead_lettered")


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
            rollups = read_rollups()
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
        labels = [bucket_label(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
        for kind in sorted(kinds):

            def total(label, kind=kind):
                return live.get((kind, label), 0) + rollups.get(("attempt_duration", kind, "", label), 0)

            family.add_metric([kind], [(label, total(label)) for label in labels], sum_value=total("sum_ms") / 1000.0)
        return family

    def _webhook_intake(self):
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
        age = GaugeMetricFamily(
            "backstop_periodic_job_heartbeat_age_seconds",
            "Seconds since each periodic job last finished a run (NaN: never)",
            labels=["job"],
        )
        stale = GaugeMetricFamily("backstop_periodic_job_stale", "1 when a job's heartbeat is stale", labels=["job"])
        for beat in sorted(periodic.heartbeats(now, self.config), key=lambda beat: beat.name):
            seconds = beat.heartbeat_age_seconds
            age.add_metric([beat.name], float("nan") if seconds is None else float(seconds))
            stale.add_metric([beat.name], 0 if beat.fresh else 1)
        yield age
        yield stale

    def _circuits(self, now):
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
