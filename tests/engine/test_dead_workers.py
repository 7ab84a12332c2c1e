"""A consumer killed with ``kill -9`` leaves attempts running: its host's reconciler (or the consumer
that replaces it) recovers them at once instead of waiting for their lease to run out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from sqlalchemy import update

from tests.engine.scripted import T0, new_op
from tests.support.reads import attempts_of, load
from webapp.config import load as load_settings
from webapp.extensions import db
from webapp.models import OperationAttempt
from webapp.services.engine import reconciler, runner

HOST = socket.gethostname()


def a_pid_that_is_gone() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def claimed_by(key: str, worker: str) -> int:
    """An operation claimed at T0 whose open attempt names ``worker`` as its holder."""
    operation_id = new_op(key)
    runner.claim(operation_id, now=T0)
    db.session.execute(
        update(OperationAttempt).where(OperationAttempt.operation_id == operation_id).values(worker=worker)
    )
    db.session.commit()
    return operation_id


def test_an_attempt_of_a_process_that_is_gone_is_recovered_before_its_lease_ends(sqlite_app, bell):
    operation_id = claimed_by("killed", f"{HOST}:{a_pid_that_is_gone()}:Worker-1")

    report = reconciler.reconcile(T0, load_settings({}))  # the lease has minutes left

    assert report.recovered == 1
    operation = load(operation_id)
    assert operation.state == "retrying" and operation.lease_expires_at is None
    assert "is gone" in operation.error_message
    assert [attempt.outcome for attempt in attempts_of(operation_id)] == ["crashed"]


def test_attempts_of_live_processes_and_of_other_hosts_are_left_to_their_lease(sqlite_app, bell):
    alive = claimed_by("alive", f"{HOST}:{os.getppid()}:Worker-1")
    elsewhere = claimed_by("elsewhere", f"not-{HOST}:{a_pid_that_is_gone()}:Worker-1")
    mine = claimed_by("mine", runner.worker_identity())
    odd = claimed_by("odd", f"{HOST}:not-a-pid")

    assert reconciler.reconcile(T0, load_settings({})).recovered == 0
    assert {load(i).state for i in (alive, elsewhere, mine, odd)} == {"running"}


def test_a_dead_workers_attempt_is_never_taken_for_a_live_workers_operation(sqlite_app, bell):
    gone = claimed_by("gone", f"{HOST}:{a_pid_that_is_gone()}:Worker-1")
    alive = claimed_by("alive-beside", f"{HOST}:{os.getppid()}:Worker-2")  # also on its first attempt

    assert reconciler.reconcile(T0, load_settings({})).recovered == 1
    assert (load(gone).state, load(alive).state) == ("retrying", "running")
    assert [attempt.outcome for attempt in attempts_of(alive)] == ["running"]


def test_a_host_name_is_matched_literally_not_as_a_pattern(sqlite_app, bell):
    # "_" and "%" are LIKE wildcards: another host whose name only matches as a pattern is not ours.
    lookalike = HOST[:-1] + ("x" if HOST[-1] != "x" else "y")
    operation_id = claimed_by("lookalike", f"{lookalike}:{a_pid_that_is_gone()}:Worker-1")

    assert reconciler.recover_dead_local_workers(T0, 100) == 0
    assert load(operation_id).state == "running"


def test_a_starting_consumer_recovers_dead_attempts_and_rings_everything_due(sqlite_app, bell):
    crashed = claimed_by("crashed", f"{HOST}:{a_pid_that_is_gone()}:Worker-2")
    rung_just_now = new_op("waiting")  # rung at creation: its ring may have died with the consumer
    later = new_op("later", run_at=T0.replace(year=T0.year + 1))
    bell.rings.clear()

    report = reconciler.recover_after_restart(T0, load_settings({}))

    assert report.recovered == 1 and report.rung >= 1
    rung = [operation_id for operation_id, _ in bell.rings]
    assert rung_just_now in rung and later not in rung
    assert load(crashed).state == "retrying"
