"""A handler registered without a policy: three retries, backoff from 2 s doubling up to 30 minutes."""

from __future__ import annotations

import random
from datetime import timedelta

from webapp.domain.errors import ErrorKind
from webapp.domain.retry import Decision, RetryPolicy


def test_an_operation_gets_three_retries_after_its_first_attempt():
    policy = RetryPolicy()

    decisions = [policy.decide(attempt, ErrorKind.TRANSIENT) for attempt in range(1, 5)]

    assert decisions == [Decision.RETRY, Decision.RETRY, Decision.RETRY, Decision.DEAD]
    assert policy == RetryPolicy.retries(3)


def test_the_longest_wait_starts_at_two_seconds_and_doubles_up_to_thirty_minutes():
    policy = RetryPolicy()

    ceilings = [policy.ceiling(attempt).total_seconds() for attempt in range(1, 13)]

    assert ceilings == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1800, 1800]


def test_waits_are_spread_by_full_jitter_below_the_ceiling():
    policy = RetryPolicy()
    rng = random.Random(7)

    waits = [policy.delay(3, rng) for _ in range(200)]

    assert all(timedelta(0) <= wait <= timedelta(seconds=8) for wait in waits)
    assert min(waits) < timedelta(seconds=1) and max(waits) > timedelta(seconds=7)
