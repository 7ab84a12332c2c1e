"""Property tests (hypothesis) for the pure domain: retry policies, error kinds and states."""

from __future__ import annotations

import random
from datetime import timedelta
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from webapp.domain.errors import Deferral, ErrorKind, PermanentError, TransientError, classify
from webapp.domain.retry import Decision, RetryPolicy, parse_duration, parse_ladder
from webapp.domain.states import (
    ACTIVE,
    CLAIMABLE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    State,
    can_transition,
    check_transition,
)

UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "": timedelta(seconds=1),
}

# Durations up to ~30 days, in milliseconds so they are exact as timedeltas.
millis = st.integers(min_value=0, max_value=30 * 86_400_000)
attempts = st.integers(min_value=1, max_value=10_000)


@st.composite
def exponential_policies(draw) -> RetryPolicy:
    """Exponential backoff with full jitter: positive base, cap at or above it."""
    base_ms = draw(st.integers(min_value=1, max_value=3_600_000))
    cap_ms = draw(st.integers(min_value=base_ms, max_value=base_ms * 10_000))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 50)), base=timedelta(milliseconds=base_ms), cap=timedelta(milliseconds=cap_ms)
    )


ladders = st.lists(millis.map(lambda ms: timedelta(milliseconds=ms)), min_size=1, max_size=8)


def render(delta: timedelta, unit: str) -> str:
    """Write ``delta`` (a whole number of ``unit``) the way an operator would."""
    return f"{delta // UNITS[unit]}{unit}"


# --- RetryPolicy: backoff -----------------------------------------------------------------


@given(exponential_policies(), attempts, st.integers(min_value=0))
def test_full_jitter_delay_is_within_zero_and_the_ceiling(policy, attempt, seed):
    delay = policy.delay(attempt, random.Random(seed))
    assert timedelta(0) <= delay <= policy.ceiling(attempt)


@given(exponential_policies(), attempts)
def test_ceiling_never_decreases_and_never_passes_the_cap(policy, attempt):
    assert policy.ceiling(attempt) <= policy.ceiling(attempt + 1) <= policy.cap


@given(exponential_policies())
def test_ceiling_starts_at_base_doubles_and_reaches_the_cap(policy):
    assert policy.ceiling(1) == policy.base
    if policy.base * 2 <= policy.cap:
        assert policy.ceiling(2) == policy.base * 2
    # No overflow for absurd attempt numbers: it simply stays at the cap.
    assert policy.ceiling(10**9) == policy.cap


@given(exponential_policies(), attempts)
def test_without_jitter_the_delay_is_the_ceiling(policy, attempt):
    steady = RetryPolicy(max_attempts=policy.max_attempts, base=policy.base, cap=policy.cap, jitter=False)
    assert steady.delay(attempt) == steady.ceiling(attempt)


def test_jitter_actually_spreads_delays():
    policy = RetryPolicy(base=timedelta(seconds=10), cap=timedelta(seconds=10))
    rng = random.Random(7)
    delays = {policy.delay(1, rng) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= timedelta(seconds=10)


@given(ladders, st.integers(min_value=0, max_value=20))
def test_ladder_returns_exact_rungs_then_repeats_the_last(steps, beyond):
    policy = RetryPolicy(max_attempts=3, ladder=tuple(steps))
    for number, step in enumerate(steps, start=1):
        assert policy.ceiling(number) == step
        assert policy.delay(number) == step  # a ladder is exact: no jitter
    assert policy.delay(len(steps) + 1 + beyond) == steps[-1]


@given(ladders, st.sampled_from(sorted(UNITS)), st.sampled_from([",", ", ", " ,  "]))
def test_from_ladder_parses_each_rung_and_allows_one_retry_per_rung(steps, unit, separator):
    steps = [UNITS[unit] * (step // UNITS[unit]) for step in steps]  # whole units only
    policy = RetryPolicy.from_ladder(separator.join(render(step, unit) for step in steps))
    assert policy.ladder == tuple(steps)
    assert policy.max_attempts == len(steps) + 1
    assert policy.jitter is False


def test_from_ladder_with_explicit_max_attempts():
    assert RetryPolicy.from_ladder("1s, 5s, 30s, 5m, 30m", max_attempts=3).max_attempts == 3
    with pytest.raises(ValueError):
        RetryPolicy.from_ladder("1s, 5s", max_attempts=0)


@settings(max_examples=50)
@given(ladders)
def test_from_steps_in_seconds_is_the_policy_of_the_same_ladder_text(steps):
    text = ", ".join(render(step, "ms") for step in steps)
    seconds = tuple(step.total_seconds() for step in parse_ladder(text))  # a ladder setting, as config parses it
    assert RetryPolicy.from_steps(seconds) == RetryPolicy.from_ladder(text)


def test_from_steps_needs_a_step_and_takes_explicit_max_attempts():
    with pytest.raises(ValueError, match="at least one step"):
        RetryPolicy.from_steps(())
    assert RetryPolicy.from_steps((1.0, 5.0), max_attempts=2).max_attempts == 2
    with pytest.raises(ValueError):
        RetryPolicy.from_steps((1.0,), max_attempts=0)


def test_seed_ladder_and_retries_helper():
    policy = RetryPolicy.from_ladder("1s, 5s, 30s, 5m, 30m")
    assert [policy.ceiling(n).total_seconds() for n in range(1, 7)] == [1, 5, 30, 300, 1800, 1800]
    assert RetryPolicy.retries(3).max_attempts == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base": timedelta(0)},
        {"base": timedelta(seconds=10), "cap": timedelta(seconds=5)},
    ],
)
def test_impossible_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@given(exponential_policies(), st.integers(max_value=0))
def test_attempt_numbers_start_at_one(policy, attempt):
    with pytest.raises(ValueError):
        policy.ceiling(attempt)


# --- RetryPolicy: decisions ---------------------------------------------------------------


@given(exponential_policies(), attempts)
def test_permanent_errors_are_dead_at_once(policy, attempt):
    assert policy.decide(attempt, ErrorKind.PERMANENT) == Decision.DEAD


@given(exponential_policies(), attempts)
def test_deferrals_defer_whatever_the_attempt_count(policy, attempt):
    assert policy.decide(attempt, ErrorKind.DEFERRED) == Decision.DEFER


@given(exponential_policies(), attempts)
def test_transient_errors_retry_until_max_attempts_then_die(policy, attempt):
    expected = Decision.DEAD if attempt >= policy.max_attempts else Decision.RETRY
    assert policy.decide(attempt, ErrorKind.TRANSIENT) == expected
    assert policy.exhausted(attempt) is (attempt >= policy.max_attempts)


@given(exponential_policies(), st.lists(st.booleans(), max_size=60))
def test_deferrals_never_use_up_attempts(policy, deferrals):
    """Transient failures with deferrals mixed in die exactly at the max_attempts-th failure.

    Mirrors the engine: a claim counts an attempt, a deferral gives it back.
    """
    made, failures, script = 0, 0, iter(deferrals)
    while True:
        made += 1
        kind = ErrorKind.DEFERRED if next(script, False) else ErrorKind.TRANSIENT
        decision = policy.decide(made, kind)
        if decision == Decision.DEFER:
            made -= 1
            continue
        failures += 1
        if decision == Decision.DEAD:
            break
    assert failures == policy.max_attempts


def test_classify_maps_exceptions_to_kinds():
    from datetime import datetime

    assert classify(PermanentError("x")) is ErrorKind.PERMANENT
    assert classify(Deferral(datetime(2030, 1, 1), "rate limited")) is ErrorKind.DEFERRED
    assert classify(TransientError("x")) is ErrorKind.TRANSIENT
    assert classify(KeyError("anything else")) is ErrorKind.TRANSIENT


# --- parsing durations --------------------------------------------------------------------


@given(
    st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]), st.booleans()
)
def test_parse_duration_accepts_number_and_unit(number, unit, space, upper):
    text = f" {number}{space}{unit.upper() if upper else unit} "
    assert parse_duration(text) == UNITS[unit] * number


@pytest.mark.parametrize(
    "text, seconds",
    [("500ms", 0.5), ("1.5s", 1.5), ("0.25m", 15), ("2h", 7200), ("1d", 86400), ("30", 30), (".5s", 0.5), ("0", 0)],
)
def test_parse_duration_examples(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "s",
        "ms",
        "-5s",
        "5x",
        "five seconds",
        "5 5s",
        "1e3s",
        "inf",
        "nan",
        "infs",
        "١s",
        "5s5",
        "+5s",
        "9" * 30 + "d",
        "5.s.",
        "1_000s",
    ],
)
def test_parse_duration_rejects_invalid_text(text):
    with pytest.raises(ValueError):
        parse_duration(text)


DURATION_CHARS = st.sampled_from(list("0123456789.msdh -+e_,") + ["inf", "nan", "١", "\t"])


@given(st.lists(DURATION_CHARS, max_size=8).map("".join))
def test_parse_duration_either_parses_or_raises_value_error(text):
    """Whatever the text, the answer is a non-negative timedelta or a ValueError, never another error."""
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= timedelta(0)
    assume(text.strip())
    assert text.strip()[0] in "0123456789."


@pytest.mark.parametrize("text", ["", " ", ",", " , ,", "1s, x", "1s, -2s", "5q"])
def test_parse_ladder_rejects_invalid_text(text):
    with pytest.raises(ValueError):
        parse_ladder(text)


@settings(max_examples=50)
@given(ladders)
def test_parse_ladder_round_trips_milliseconds(steps):
    assert parse_ladder(", ".join(render(step, "ms") for step in steps)) == tuple(steps)


# --- states and transitions ----------------------------------------------------------------

ALL_PAIRS = [(source, target) for source in State for target in State]


@pytest.mark.parametrize("source, target", ALL_PAIRS, ids=[f"{s}->{t}" for s, t in ALL_PAIRS])
def test_every_pair_is_allowed_exactly_when_listed(source, target):
    if target in TRANSITIONS[source]:
        assert can_transition(source, target)
        assert check_transition(source, target) is target
        # The database stores plain strings; they are accepted too.
        assert check_transition(source.value, target.value) is target
    else:
        assert not can_transition(source, target)
        with pytest.raises(InvalidTransition) as raised:
            check_transition(source, target)
        assert (raised.value.source, raised.value.target) == (source, target)
        assert str(source) in str(raised.value) and str(target) in str(raised.value)


def test_the_diagram_of_architecture_md():
    assert TRANSITIONS[State.SCHEDULED] >= {State.PENDING, State.CANCELLED}
    assert State.RUNNING in TRANSITIONS[State.PENDING]
    assert TRANSITIONS[State.RUNNING] >= {State.SUCCEEDED, State.RETRYING, State.DEAD}
    assert State.PENDING in TRANSITIONS[State.RETRYING]


def test_terminal_states_have_no_exit_except_dead_back_to_pending():
    assert {State.SUCCEEDED, State.DEAD, State.CANCELLED} == TERMINAL
    assert TRANSITIONS[State.SUCCEEDED] == frozenset()
    assert TRANSITIONS[State.CANCELLED] == frozenset()
    assert TRANSITIONS[State.DEAD] == {State.PENDING}


def test_state_groups_are_consistent():
    assert set(State) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL
    assert CLAIMABLE <= ACTIVE
    assert all(can_transition(state, State.RUNNING) for state in CLAIMABLE)
    # Only a claim enters running, and only running leads to an outcome.
    assert {s for s in State if can_transition(s, State.RUNNING)} == CLAIMABLE
    assert {s for s in State if can_transition(s, State.SUCCEEDED)} == {State.RUNNING}
    # Only an operation still waiting to run can be cancelled or put off.
    assert {s for s in State if can_transition(s, State.CANCELLED)} == CLAIMABLE
    assert {s for s in State if can_transition(s, State.SCHEDULED)} == CLAIMABLE


def test_every_active_state_can_still_finish():
    """No trap: from every active state some path of allowed moves reaches a terminal state."""
    for start in ACTIVE:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()] - seen:
                seen.add(nxt)
                frontier.append(nxt)
        assert seen & TERMINAL, start


@given(st.sampled_from([State.SCHEDULED, State.PENDING]), st.data())
def test_random_walks_through_allowed_moves_stay_valid(start, data):
    state, path = start, [start]
    for _ in range(data.draw(st.integers(0, 40))):
        options = sorted(TRANSITIONS[state])
        if not options:
            break
        nxt = data.draw(st.sampled_from(options))
        state = check_transition(state, nxt)
        path.append(state)
        assert isinstance(state, State)
    # Walks end only in a terminal state (or when cut short); a succeeded or cancelled
    # operation never moves again.
    if not TRANSITIONS[state]:
        assert state in TERMINAL
    for earlier, later in pairwise(path):
        assert earlier not in {State.SUCCEEDED, State.CANCELLED}
        if later is State.RUNNING:
            assert earlier in CLAIMABLE
