"""Running the suite on several pytest-xdist workers.

A test that measures time (batch durations, pick-up latency) is marked ``alone``: it asserts what
it would on a quiet machine, so while it runs no other worker runs a test. Every test holds a
shared lock on a file of this test run; an ``alone`` test holds it exclusively. A second "gate"
lock gives the exclusive request priority: once an ``alone`` test waits, no other test starts.

The slow tests (those starting real processes) are handed out first, so that the run does not
end with one worker busy on a long test while the others have nothing left to do; the ``alone``
tests come last, when the tests they must wait for are short.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest


def _lock(stack: ExitStack, path: Path, mode: int) -> None:
    """Take an flock on ``path`` until ``stack`` closes (closing the file releases it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    stack.callback(os.close, fd)
    fcntl.flock(fd, mode)


@contextmanager
def _turn(folder: Path, alone: bool):
    """Hold the run's lock in ``folder``: exclusively for an ``alone`` test, shared for any other."""
    gate, turn = folder / "xdist-gate.lock", folder / "xdist-turn.lock"
    with ExitStack() as held:
        if alone:
            _lock(held, gate, fcntl.LOCK_EX)  # kept: no new test starts from here on
            _lock(held, turn, fcntl.LOCK_EX)  # waits for the running tests to finish
        else:
            with ExitStack() as passing:
                _lock(passing, gate, fcntl.LOCK_EX)  # blocks while an alone test waits or runs
                _lock(held, turn, fcntl.LOCK_SH)
        yield


def _run_folder(config) -> Path | None:
    """A folder shared by this run's xdist workers (the parent of their base temp), or None."""
    if not hasattr(config, "workerinput") or not config.option.basetemp:
        return None  # one process: tests already run one at a time
    return Path(config.option.basetemp).parent


SLOW_FIXTURES = {"start_worker", "start_gunicorn"}


def _turn_in_run(item) -> int:
    """0 for a test starting real processes (seconds to tens of seconds), 2 for an ``alone`` test, else 1."""
    if item.get_closest_marker("alone") is not None:
        return 2
    return 0 if SLOW_FIXTURES & set(item.fixturenames) else 1


def pytest_collection_modifyitems(config, items):
    """On xdist workers, order slow, quick, alone (every worker sorts alike, so collections agree)."""
    if hasattr(config, "workerinput"):
        items.sort(key=_turn_in_run)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Run each test (set-up, call and tear-down) holding the run's lock, on an xdist worker."""
    folder = _run_folder(item.config)
    if folder is None:
        return (yield)
    with _turn(folder, alone=item.get_closest_marker("alone") is not None):
        return (yield)
