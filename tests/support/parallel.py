"""Running the suite on several pytest-xdist workers.

A test that measures time (batch durations, pick-up latency) is marked ``alone``: it asserts what
it would on a quiet machine, so while it runs no other worker runs a test. Every test holds a
shared lock on a file of this test run; an ``alone`` test holds it exclusively. A second "gate"
lock gives the exclusive request priority: once an ``alone`` test waits, no other test starts.

Order: the slow tests (those starting real processes, which spend most of their time waiting)
are spread over the first two thirds of the quick ones, so that a few run at any time beside
quick tests that use the CPU meanwhile, and the run does not end with one worker busy on a long
test while the others have nothing left; the ``alone`` tests come last, when the tests they must
wait for are short.
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


def _is_slow(item) -> bool:
    """Whether the test starts real processes: seconds to tens of seconds, mostly waiting."""
    return bool(SLOW_FIXTURES & set(item.fixturenames))


def _spread(items: list) -> list:
    """Quick tests in order, the slow ones spread evenly over their first two thirds, alone tests last."""
    alone = [item for item in items if item.get_closest_marker("alone") is not None]
    rest = [item for item in items if item.get_closest_marker("alone") is None]
    slow = [item for item in rest if _is_slow(item)]
    quick = [item for item in rest if not _is_slow(item)]
    step = (len(quick) * 2 / 3) / max(len(slow), 1)
    keyed = [(index, 1, item) for index, item in enumerate(quick)]
    keyed += [(number * step, 0, item) for number, item in enumerate(slow)]  # 0: before a quick one at a tie
    return [item for _, _, item in sorted(keyed, key=lambda entry: entry[:2])] + alone


def pytest_collection_modifyitems(config, items):
    """On xdist workers, order the tests as :func:`_spread` does (every worker alike, so collections agree)."""
    if hasattr(config, "workerinput"):
        items[:] = _spread(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Run each test (set-up, call and tear-down) holding the run's lock, on an xdist worker."""
    folder = _run_folder(item.config)
    if folder is None:
        return (yield)
    with _turn(folder, alone=item.get_closest_marker("alone") is not None):
        return (yield)
