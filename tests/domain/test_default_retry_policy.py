"""A handler registered without a policy: three retries, backoff from 2 s doubling up to 30 minutes."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta

import pytest

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
    # The random source given is the one used: the same seed draws the same waits.
    assert [policy.delay(3, random.Random(7)) for _ in range(3)] == [waits[0]] * 3


def test_without_a_random_source_waits_are_still_jittered():
    policy = RetryPolicy()

    waits = {policy.delay(3) for _ in range(50)}

    assert len(waits) > 1 and all(timedelta(0) <= wait <= timedelta(seconds=8) for wait in waits)


def test_a_negative_base_delay_is_refused():
    with pytest.raises(ValueError, match="base delay must be positive"):
        RetryPolicy(base=timedelta(seconds=-1))


def test_a_policy_is_an_immutable_value_that_handlers_can_share():
    shared = RetryPolicy.retries(3)

    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.max_attempts = 10  # one handler cannot change another's budget
    assert {shared, RetryPolicy()} == {RetryPolicy()}  # equal policies are one value
