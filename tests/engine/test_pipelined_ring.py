"""Rings on Redis go out without waiting for Redis's reply (``tasks.queue.PipelinedLpush``).

The message pushed must be the one Huey's own enqueue pushes; a reply that is an error must be
logged and counted against the ring it belonged to when the thread next rings; a connection that
broke must fail the ring that finds it, within the queue's timeout, and be replaced; threads and
forked children must each use their own connection. All against the real Redis.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import datetime

import pytest
import redis

from tasks.queue import HueyDoorbell, huey_from_url
from tests.support.logs import records_of
from tests.support.servers import REDIS_HOST, REDIS_PORT, flush_redis_queue, require_server
from webapp.services.engine import doorbell

STAMP = datetime(2026, 12, 3, 9, 0, 0, 123456)


@pytest.fixture
def bell():
    """A doorbell on a private Redis queue, with a ``run_operation`` task as Backstop registers it."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    name = f"ring-{uuid.uuid4().hex[:8]}"
    huey = huey_from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", name, timeout=1.0)
    run_operation = huey.task(name="tasks.runtime.run_operation")(lambda operation_id, stamp=None: None)
    yield HueyDoorbell(huey, run_operation)
    flush_redis_queue(name)


@pytest.fixture
def warnings():
    """Warnings of the ``backstop.doorbell`` logger."""
    with records_of("backstop.doorbell", logging.WARNING) as records:
        yield records


def queued(bell: HueyDoorbell) -> list[tuple]:
    """The ``(task name, args)`` of every message in the queue, oldest first."""
    return [(task.name, task.args) for task in bell.huey.pending()]


def test_a_ring_pushes_the_message_hueys_enqueue_would(bell):
    bell.ring(7, stamp=STAMP)
    bell.run_operation(8, STAMP)  # Huey's own enqueue, for comparison
    assert bell.lpush is not None
    bell.lpush.settle()
    assert queued(bell) == [("tasks.runtime.run_operation", (7, STAMP)), ("tasks.runtime.run_operation", (8, STAMP))]
    raw = bell.huey.storage.conn.lrange(bell.huey.storage.queue_key, 0, -1)
    ours, hueys = raw[1], raw[0]  # LPUSH: the newest is first
    assert bell.huey.deserialize_task(ours).args == (7, STAMP) and len(ours) == len(hueys)


def test_a_ring_does_not_wait_for_the_reply_and_the_next_ring_reads_it(bell):
    bell.ring(1, stamp=STAMP)
    connection = bell.lpush.connection_of_this_thread()
    # The reply to the first push is still to be read: the ring returned without reading it.
    assert connection.can_read(timeout=1.0)
    bell.ring(2, stamp=STAMP)
    assert bell.lpush.connection_of_this_thread() is connection  # one connection, replies read in turn
    bell.lpush.settle()
    assert not connection.can_read(timeout=0)
    assert [args for _, args in queued(bell)] == [(1, STAMP), (2, STAMP)]


def test_an_error_reply_is_logged_against_its_own_ring_and_the_connection_kept(bell, warnings):
    key = bell.huey.storage.queue_key
    bell.huey.storage.conn.set(key, "not a list")  # every LPUSH now answers WRONGTYPE
    failed_before = doorbell.RingStats.failed
    bell.ring(41, stamp=STAMP)  # sent; its reply is an error nobody has read yet
    connection = bell.lpush.connection_of_this_thread()
    bell.huey.storage.conn.delete(key)
    bell.ring(42, stamp=STAMP)  # reads 41's error first, then pushes onto the (now empty) key
    bell.lpush.settle()
    assert doorbell.RingStats.failed == failed_before + 1
    assert [r.getMessage() for r in warnings if "not confirmed" in r.getMessage()] == [
        f"the ring of operation 41 was not confirmed (ResponseError: {_wrongtype()}); the reconciler will"
    ]
    assert bell.lpush.connection_of_this_thread() is connection
    assert [args for _, args in queued(bell)] == [(42, STAMP)]


def _wrongtype() -> str:
    return "WRONGTYPE Operation against a key holding the wrong kind of value"


def test_a_reply_that_never_comes_fails_that_ring_and_the_next_then_the_connection_is_replaced(bell, warnings):
    bell.ring(1, stamp=STAMP)
    bell.lpush.settle()
    connection = bell.lpush.connection_of_this_thread()
    bell.ring(2, stamp=STAMP)
    connection.read_response()  # 2's reply taken from under the ring, as if it never came
    failed_before = doorbell.RingStats.failed
    with pytest.raises(redis.TimeoutError):
        bell.ring(3, stamp=STAMP)
    assert doorbell.RingStats.failed == failed_before + 1
    assert any("the ring of operation 2 was not confirmed (TimeoutError" in r.getMessage() for r in warnings)
    assert bell.lpush.connection_of_this_thread() is None  # dropped: the next ring connects afresh
    bell.ring(4, stamp=STAMP)
    bell.lpush.settle()
    assert bell.lpush.connection_of_this_thread() is not connection
    assert [args for _, args in queued(bell)] == [(1, STAMP), (2, STAMP), (4, STAMP)]


def test_a_connection_redis_closed_while_idle_is_replaced_before_the_next_push(bell):
    bell.ring(1, stamp=STAMP)
    connection = bell.lpush.settle()
    connection.send_command("CLIENT", "ID")
    client_id = connection.read_response()
    # As Redis's idle ``timeout`` (or a restart) would: the server closes the connection.
    assert bell.huey.storage.conn.client_kill_filter(_id=client_id) == 1
    bell.ring(2, stamp=STAMP)  # sent into the closed socket, it would be lost without a word
    bell.lpush.settle()
    assert bell.lpush.connection_of_this_thread() is not connection
    assert [args for _, args in queued(bell)] == [(1, STAMP), (2, STAMP)]


def test_replaced_connections_take_no_slot_of_the_queues_pool():
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    name = f"ring-{uuid.uuid4().hex[:8]}"
    # A pool of one connection: the queue's own commands must still get it, however often rings reconnect.
    huey = huey_from_url(f"redis://{REDIS_HOST}:{REDIS_PORT}/0?max_connections=1", name, timeout=1.0)
    bell = HueyDoorbell(huey, huey.task(name="tasks.runtime.run_operation")(lambda operation_id, stamp=None: None))
    try:
        for operation_id in range(3):
            bell.ring(operation_id, stamp=STAMP)
            connection = bell.lpush.settle()
            connection.send_command("CLIENT", "ID")
            client_id = connection.read_response()
            assert huey.storage.conn.client_kill_filter(_id=client_id) == 1
        assert huey.pending_count() == 3
    finally:
        flush_redis_queue(name)


def test_a_queue_that_cannot_be_reached_fails_the_ring_at_once():
    huey = huey_from_url("redis://127.0.0.1:1/0", "unreachable", timeout=1.0)
    bell = HueyDoorbell(huey, huey.task(name="tasks.runtime.run_operation")(lambda operation_id, stamp=None: None))
    with pytest.raises(redis.ConnectionError):
        bell.ring(1, stamp=STAMP)
    assert bell.lpush.connection_of_this_thread() is None


def test_threads_ring_on_connections_of_their_own(bell):
    seen: dict[int, object] = {}

    def ring_from_a_thread(number: int) -> None:
        for operation_id in range(number * 100, number * 100 + 25):
            bell.ring(operation_id, stamp=STAMP)
        seen[number] = bell.lpush.connection_of_this_thread()
        bell.lpush.settle()

    threads = [threading.Thread(target=ring_from_a_thread, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len({id(connection) for connection in seen.values()}) == 4
    assert sorted(args[0] for _, args in queued(bell)) == [n * 100 + i for n in range(4) for i in range(25)]


def test_a_forked_child_rings_on_its_own_connection(bell):
    bell.ring(1, stamp=STAMP)  # the parent's connection, its reply unread
    parents = bell.lpush.connection_of_this_thread()
    pid = os.fork()
    if pid == 0:  # the child: must not read the parent's reply nor write on its socket
        code = 1
        try:
            bell.ring(2, stamp=STAMP)
            mine = bell.lpush.connection_of_this_thread()
            bell.lpush.settle()
            code = 0 if mine is not parents else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    bell.ring(3, stamp=STAMP)  # reads its own reply to 1 on its own socket
    bell.lpush.settle()
    assert bell.lpush.connection_of_this_thread() is parents
    assert sorted(args[0] for _, args in queued(bell)) == [1, 2, 3]


def test_sqlite_queues_ring_through_hueys_own_enqueue(tmp_path):
    huey = huey_from_url(f"sqlite:///{tmp_path / 'queue.sqlite3'}", "ring-sqlite")
    bell = HueyDoorbell(huey, huey.task(name="tasks.runtime.run_operation")(lambda operation_id, stamp=None: None))
    assert bell.lpush is None
    bell.ring(5, stamp=STAMP)
    assert [(task.name, task.args) for task in huey.pending()] == [("tasks.runtime.run_operation", (5, STAMP))]
