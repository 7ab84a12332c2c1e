"""Backstop's Huey queue: no revocation round trips per task, and no log lines of Huey's own per task.

Huey looks up a task's revocation flags before running it and deletes its flag after: two queue
round trips per operation. Backstop stops operations in the database instead, so its queue
(``tasks.queue.WithoutRevocation``) must make neither call, on Redis and on SqliteHuey, while
plain Huey on the same storage still makes both (so a Huey upgrade that renames its revocation
keys fails here instead of quietly bringing the round trips back).
"""

from __future__ import annotations

import logging
import uuid

import pytest
from huey import RedisHuey, SqliteHuey

from tasks.queue import (
    HUEY_TASK_LINES,
    RedisQueue,
    RevocationUnsupported,
    SqliteQueue,
    WithoutHueyTaskLines,
    drop_huey_task_lines,
    huey_from_url,
)
from tests.support.servers import REDIS_HOST, REDIS_PORT, flush_redis_queue, require_server


class StorageCalls:
    """Counts the storage calls Huey's revocation makes, passing every call through."""

    def __init__(self, storage):
        self.peeks = self.deletes = 0
        peek_many, delete_data = storage.peek_many, storage.delete_data

        def counted_peek_many(keys):
            self.peeks += 1
            return peek_many(keys)

        def counted_delete_data(key):
            self.deletes += 1
            return delete_data(key)

        storage.peek_many, storage.delete_data = counted_peek_many, counted_delete_data


@pytest.fixture(params=["sqlite", "redis"])
def queues(request, tmp_path):
    """(Backstop's queue, plain Huey) of one backend, each with a no-op task, both emptied after."""
    name = f"revocation-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        require_server("Redis", REDIS_HOST, REDIS_PORT)
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
        plain = RedisHuey(name + "-plain", host=REDIS_HOST, port=REDIS_PORT, results=False)
    else:
        url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
        plain = SqliteHuey(name + "-plain", filename=str(tmp_path / "plain.sqlite3"), results=False)
    ours = huey_from_url(url, name)
    yield ours, plain
    if request.param == "redis":
        flush_redis_queue(name)


def _run_three(huey) -> tuple[StorageCalls, list[int]]:
    ran = []
    noop = huey.task(name="noop")(ran.append)
    for number in range(3):
        noop(number)
    calls = StorageCalls(huey.storage)
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
    return calls, ran


def test_backstops_queue_is_the_right_huey_for_each_url(queues):
    ours, _ = queues
    assert isinstance(ours, (RedisQueue, SqliteQueue))
    assert isinstance(ours, RedisHuey) != isinstance(ours, SqliteHuey)


def test_a_task_runs_without_the_revocation_round_trips(queues):
    ours, plain = queues
    calls, ran = _run_three(ours)
    assert ran == [0, 1, 2]
    assert (calls.peeks, calls.deletes) == (0, 0)
    # Plain Huey on the same storage makes one of each per task: the test can tell them apart.
    plain_calls, plain_ran = _run_three(plain)
    assert plain_ran == [0, 1, 2]
    assert (plain_calls.peeks, plain_calls.deletes) == (3, 3)


def test_revoking_is_refused_rather_than_silently_ignored(queues):
    ours, _ = queues
    noop = ours.task(name="noop")(lambda: None)
    queued = noop.s()
    ours.enqueue(queued)  # results=False: the queue hands back no Result to revoke through
    for revoke in (noop.revoke, lambda: ours.revoke(queued), lambda: ours.revoke_by_id(queued.id)):
        with pytest.raises(RevocationUnsupported, match="pause the operation's name or cancel"):
            revoke()
    # The refused revocations left the task queued and runnable.
    task = ours.dequeue()
    assert task.id == queued.id and ours.is_revoked(task) is False


def test_other_keys_are_still_deleted(queues):
    ours, _ = queues
    ours.put("lock:example", "held")
    assert ours.delete("lock:example")
    assert ours.get("lock:example") is None


# --- one log line per attempt ------------------------------------------------------------------


class Records(logging.Handler):
    """Keeps what reaches it (attached to Huey's logger: after that logger's filters)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def huey_logger():
    """Huey's logger at INFO, watched by a :class:`Records`, without Backstop's filter; all put back after."""
    logger = logging.getLogger("huey")
    level, filters = logger.level, list(logger.filters)
    records = Records()
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    for existing in filters:  # this process may have installed it already (any app's bind)
        logger.removeFilter(existing)
    yield logger, records
    logger.removeHandler(records)
    logger.setLevel(level)
    logger.filters[:] = filters


def test_huey_logs_no_line_of_its_own_per_task_but_still_its_errors(tmp_path, huey_logger):
    logger, seen = huey_logger
    huey = huey_from_url(f"sqlite:///{tmp_path / 'queue.sqlite3'}", "lines")
    noop = huey.task(name="noop")(lambda: None)

    @huey.task(name="broken")
    def broken():
        raise RuntimeError("boom")

    def run_both() -> list[logging.LogRecord]:
        seen.records.clear()
        for task in (noop, broken):
            task()
            huey.execute(huey.dequeue())
        return list(seen.records)

    # Plain Huey writes both lines for every task: the templates still match its own.
    plain = run_both()
    assert {record.msg for record in plain if record.levelno == logging.INFO} == HUEY_TASK_LINES

    drop_huey_task_lines()
    drop_huey_task_lines()  # once only
    assert sum(isinstance(existing, WithoutHueyTaskLines) for existing in logger.filters) == 1
    quiet = run_both()

    assert [record.levelname for record in quiet] == ["ERROR"]
    assert "Unhandled exception in task" in quiet[0].getMessage()
