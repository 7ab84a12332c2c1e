"""Periodic jobs: one runner at a time under a database lease, heartbeats, and the self-registering job table."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from tasks.runtime import run_periodic_jobs
from tests.support.engine import (
    ROOT,
    T0,
    TICK_ORDER,
    job_row,
    result_of,
    run_in_thread,
)
from tests.support.reads import detached
from webapp.config import load
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import JobRun, PeriodicJob
from webapp.services.engine import periodic, reconciler

# --- periodic jobs under a lease -------------------------------------------------------------


def test_second_concurrent_runner_gets_none_while_the_first_holds_the_lease(app):
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(now):
        calls.append("first")
        inside.set()
        assert release.wait(20)
        return "first done"

    def fast(now):
        calls.append("second")
        return "second done"

    first = run_in_thread(app, lambda: periodic.run_exclusive("job.lease", slow, interval_seconds=60, lease_seconds=30))
    assert inside.wait(20)
    second = run_in_thread(
        app, lambda: periodic.run_exclusive("job.lease", fast, interval_seconds=60, lease_seconds=30)
    )
    assert result_of(*second) is None
    release.set()

    run = result_of(*first)
    assert (run.outcome, run.summary) == ("ok", "first done")
    assert calls == ["first"]
    job = job_row("job.lease")
    assert job.lease_holder is None and job.runs == 1


def test_a_crashed_holders_lease_is_taken_over_after_it_expires(app):
    assert periodic.acquire_lease("job.crash", "ghost", ttl_seconds=30, now=T0, interval_seconds=60)
    ran: list[datetime] = []

    def record(now):
        ran.append(now)
        return "took over"

    assert (
        periodic.run_exclusive(
            "job.crash", record, interval_seconds=60, lease_seconds=30, clock=lambda: T0 + timedelta(seconds=29)
        )
        is None
    )
    run = periodic.run_exclusive(
        "job.crash", record, interval_seconds=60, lease_seconds=30, clock=lambda: T0 + timedelta(seconds=30)
    )

    assert run is not None and run.holder != "ghost" and run.summary == "took over"
    assert ran == [T0 + timedelta(seconds=30)]
    assert job_row("job.crash").lease_holder is None


def test_a_run_cut_short_is_closed_as_abandoned_by_the_next_run(app):
    def cut_short(now):
        db.session.rollback()
        raise KeyboardInterrupt  # what an outage or a kill looks like here: no outcome recorded

    with pytest.raises(KeyboardInterrupt):
        periodic.run_exclusive("job.cut", cut_short, interval_seconds=60, lease_seconds=30, clock=lambda: T0)
    later = T0 + timedelta(seconds=60)
    run = periodic.run_exclusive(
        "job.cut", lambda now: "fine", interval_seconds=60, lease_seconds=30, clock=lambda: later
    )

    runs = detached(
        lambda: (
            db.session.execute(select(JobRun).where(JobRun.job_name == "job.cut").order_by(JobRun.started_at))
            .scalars()
            .all()
        )
    )
    assert [(r.started_at, r.outcome, r.finished_at) for r in runs] == [(T0, "abandoned", later), (later, "ok", later)]
    assert runs[0].error == "its runner stopped before recording an outcome" and run.outcome == "ok"


def test_a_runner_that_waited_for_the_lease_does_not_run_the_job_again(app):
    """Runner B saw the job due, then runner A ran it to the end while B waited for the lock:
    B gets the free lease but must find the job no longer due (and record nothing stale)."""
    ran: list[str] = []
    calls = {"b": 0}

    def clock_of_b():
        calls["b"] += 1
        if calls["b"] == 2:  # B is about to take the lease: A gets there first and finishes
            periodic.run_exclusive(
                "job.race",
                lambda now: ran.append("a") or "a",
                interval_seconds=60,
                lease_seconds=30,
                clock=lambda: T0 + timedelta(seconds=1),
            )
        return T0 + timedelta(seconds=calls["b"] * 0.001)

    run = periodic.run_exclusive(
        "job.race", lambda now: ran.append("b") or "b", interval_seconds=60, lease_seconds=30, clock=clock_of_b
    )

    assert run is None and ran == ["a"]
    assert job_row("job.race").lease_holder is None and job_row("job.race").runs == 1


def test_run_records_heartbeat_and_history_and_respects_the_interval(app):
    now = {"t": T0}

    def tick(at):
        return f"ran at {at:%H:%M:%S}"

    def run():
        return periodic.run_exclusive("job.beat", tick, interval_seconds=60, lease_seconds=30, clock=lambda: now["t"])

    first = run()
    now["t"] = T0 + timedelta(seconds=30)
    skipped = run()
    now["t"] = T0 + timedelta(seconds=60)
    second = run()

    assert skipped is None
    assert (first.outcome, first.summary, first.started_at, first.finished_at) == ("ok", "ran at 12:00:00", T0, T0)
    assert first.duration_ms >= 0 and second.summary == "ran at 12:01:00"
    job = job_row("job.beat")
    assert (job.runs, job.last_finished_at, job.last_summary, job.last_error) == (2, now["t"], "ran at 12:01:00", None)
    assert periodic.heartbeat_age("job.beat", now["t"] + timedelta(seconds=5)) == 5.0
    assert periodic.heartbeat_age("job.never") is None
    runs = detached(lambda: db.session.execute(select(JobRun).where(JobRun.job_name == "job.beat")).scalars().all())
    assert len(runs) == 2


def test_a_failing_job_records_its_error_and_rolls_back_its_writes(app):
    def broken(now):
        db.session.add(PeriodicJob(name="written-by-broken-job"))
        db.session.flush()
        raise ValueError("sweep exploded")

    run = periodic.run_exclusive("job.broken", broken, interval_seconds=60, lease_seconds=30, clock=lambda: T0)

    assert (run.outcome, run.error, run.finished_at) == ("failed", "ValueError: sweep exploded", T0)
    job = job_row("job.broken")
    assert (job.last_error, job.last_finished_at, job.lease_holder, job.runs) == (
        "ValueError: sweep exploded",
        T0,
        None,
        1,
    )
    assert job_row("written-by-broken-job") is None


# --- the periodic-job registry and heartbeats ------------------------------------------------


@pytest.fixture
def no_jobs(monkeypatch):
    """An empty job registry for this test; the real one is back afterwards."""
    monkeypatch.setattr(periodic, "_jobs", {})


def test_every_periodic_job_registers_itself_in_tick_order():
    from webapp.services.maintenance import cleanup, requeue
    from webapp.services.monitoring import checks

    jobs = periodic.registered_jobs()

    assert [job.name for job in jobs] == TICK_ORDER
    assert [job.run for job in jobs] == [
        reconciler.reconcile,
        requeue.auto_requeue,
        cleanup.cleanup,
        checks.daily_report_job,
        checks.run_checks,
    ]
    assert periodic.get_job("cleanup").interval(load({"CLEANUP_INTERVAL_SECONDS": "3600"})) == 3600.0


def test_the_worker_tick_knows_every_job_without_importing_one():
    """The services package wires every job in: tasks.runtime itself imports none of them."""
    code = "import tasks.runtime\nfrom webapp.services.engine import periodic\n"
    code += "print(*(job.name for job in periodic.registered_jobs()))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == TICK_ORDER


def test_a_job_name_belongs_to_one_function(no_jobs):
    @periodic.periodic_job("job.same", interval="I", lease="L", order=1)
    def first(now, config):
        return None

    periodic.register_job(periodic.get_job("job.same"))  # the same function again: a no-op
    with pytest.raises(ValueError, match="job.same"):

        @periodic.periodic_job("job.same", interval="I", lease="L", order=2)
        def second(now, config):
            return None

    assert [job.run for job in periodic.registered_jobs()] == [first]


def test_a_tick_runs_the_registered_jobs_in_order_with_now_and_config(sqlite_app, no_jobs, monkeypatch):
    monkeypatch.setitem(sqlite_app.config, "TEST_INTERVAL_SECONDS", 60)
    monkeypatch.setitem(sqlite_app.config, "TEST_LEASE_SECONDS", 30)
    seen: list[tuple] = []

    @periodic.periodic_job("job.late", interval="TEST_INTERVAL_SECONDS", lease="TEST_LEASE_SECONDS", order=2)
    def late(now, config):
        seen.append(("late", type(now), config is sqlite_app.config))

    @periodic.periodic_job("job.early", interval="TEST_INTERVAL_SECONDS", lease="TEST_LEASE_SECONDS", order=1)
    def early(now, config):
        seen.append(("early", type(now), config is sqlite_app.config))
        return 3  # any summary is recorded as text

    run_periodic_jobs(sqlite_app)

    assert seen == [("early", datetime, True), ("late", datetime, True)]
    assert (job_row("job.early").last_summary, job_row("job.late").last_summary) == ("3", None)
    assert job_row("job.early").interval_seconds == 60


def test_heartbeats_judge_each_job_by_its_own_interval(sqlite_app, no_jobs):
    config = {"FAST_SECONDS": 60, "SLOW_SECONDS": 3600, "LEASE_SECONDS": 30, "JOB_STALE_AFTER_INTERVALS": 3}
    periodic.periodic_job("job.slow", interval="SLOW_SECONDS", lease="LEASE_SECONDS", order=2)(lambda now, c: "ok")
    fast = periodic.periodic_job("job.fast", interval="FAST_SECONDS", lease="LEASE_SECONDS", order=1)(
        lambda now, c: "ok"
    )
    periodic.run_exclusive(
        "job.fast", lambda now: fast(now, config), interval_seconds=60, lease_seconds=30, clock=lambda: T0
    )
    periodic.run_exclusive("job.gone", lambda now: "ok", interval_seconds=10, lease_seconds=30, clock=lambda: T0)

    beats = periodic.heartbeats(T0 + timedelta(seconds=150), config)

    # Registered jobs in tick order, then any job only the table knows (by the interval it ran with).
    assert [beat.name for beat in beats] == ["job.fast", "job.slow", "job.gone"]
    fast_beat, slow_beat, gone_beat = beats
    assert (fast_beat.heartbeat_age_seconds, fast_beat.stale_after_seconds, fast_beat.fresh) == (150.0, 180.0, True)
    assert (fast_beat.runs, fast_beat.last_finished_at, fast_beat.last_error) == (1, T0, None)
    assert (slow_beat.heartbeat_age_seconds, slow_beat.runs, slow_beat.stale) == (None, 0, True)
    assert (gone_beat.interval_seconds, gone_beat.stale_after_seconds, gone_beat.stale) == (10, 30.0, True)
    assert fast_beat.as_dict("fresh", "runs") == {"fresh": True, "runs": 1}
    assert set(fast_beat.as_dict()) == {
        "name",
        "interval_seconds",
        "stale_after_seconds",
        "heartbeat_age_seconds",
        "last_finished_at",
        "fresh",
        "runs",
        "last_error",
    }


def test_the_reconcile_command_runs_the_registered_reconciler_at_once(sqlite_app):
    cli = sqlite_app.test_cli_runner()

    first, second = cli.invoke(args=["reconcile"]), cli.invoke(args=["reconcile"])

    assert first.output == second.output == "ok: recovered=0 promoted=0 rung=0\n"
    assert job_row("reconciler").runs == 2  # however recent its last run
    assert periodic.acquire_lease("reconciler", "ghost", ttl_seconds=60, now=utcnow(), interval_seconds=0)
    held = cli.invoke(args=["reconcile"])
    assert held.exit_code == 1 and "another reconciler holds the lease" in held.output
