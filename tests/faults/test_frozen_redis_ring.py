"""A ring on a connection Redis stops answering (SIGSTOP) gives up within the queue's timeout.

The ring does not wait for Redis's reply (``tasks.queue.PipelinedLpush``): the first ring after
the freeze is sent and returns; the next one waits for its predecessor's reply, gives up after
the timeout, reports both rings, and drops the connection; the one after cannot even connect
and gives up as fast. Once Redis answers again the rings go through, and every ring that was
sent before the freeze, or during it, is in the queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime

import pytest
import redis

from tasks.queue import HueyDoorbell, huey_from_url
from tests.support.logs import records_of

TIMEOUT = 1.0
# A ring to a frozen Redis may take the timeout, with room for a loaded machine, but not twice
# the timeout (a ring that waited for its predecessor's reply and then for a new connection).
BOUND = 1.9 * TIMEOUT
STAMP = datetime(2026, 12, 3, 10, 0, 0)


def timed(call) -> float:
    """Seconds ``call()`` took."""
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_rings_to_a_frozen_redis_give_up_within_the_timeout_and_resume_after(private_redis):
    huey = huey_from_url(private_redis.url, f"frozen-{uuid.uuid4().hex[:8]}", timeout=TIMEOUT)
    bell = HueyDoorbell(huey, huey.task(name="tasks.runtime.run_operation")(lambda operation_id, stamp=None: None))
    bell.ring(1, stamp=STAMP)
    bell.lpush.settle()  # an established connection, nothing owed

    private_redis.freeze()
    try:
        with records_of("backstop.doorbell", logging.WARNING) as warnings:
            assert timed(lambda: bell.ring(2, stamp=STAMP)) < BOUND  # sent into the kernel's buffer
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                bell.ring(3, stamp=STAMP)  # waits for 2's reply: none comes
            assert time.monotonic() - started < BOUND
            assert [w.getMessage().split(" (")[0] for w in warnings] == ["the ring of operation 2 was not confirmed"]
            assert bell.lpush.connection_of_this_thread() is None
            started = time.monotonic()
            with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
                bell.ring(4, stamp=STAMP)  # a new connection's handshake: no answer either
            assert time.monotonic() - started < BOUND
    finally:
        private_redis.thaw()

    bell.ring(5, stamp=STAMP)
    bell.lpush.settle()
    queued = {task.args[0] for task in huey.pending()}
    # 3 and 4 were never sent; 2 was, into a socket closed after it, which Redis may still read.
    assert {1, 5} <= queued <= {1, 2, 5}
