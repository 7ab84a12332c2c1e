"""Retry policies: how many attempts an operation gets and how long to wait between them."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from webapp.domain.errors import ErrorKind

# A plain decimal number (ASCII digits only) and an optional unit; float() alone would also
# take "inf", "nan", "1e3", "+5", "1_000" and non-ASCII digits.
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse ``"500ms"``, ``"5s"``, ``"5m"``, ``"2h"`` or ``"1d"`` (bare numbers are seconds)."""
    text = text.strip().lower()
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 500ms, 5s, 5m, 2h, 1d)")
    number, suffix = match.groups()
    try:
        return timedelta(seconds=float(number) * _UNITS[suffix or "s"])
    except OverflowError:
        raise ValueError(f"duration too long: {text!r}") from None


def parse_ladder(text: str) -> tuple[timedelta, ...]:
    """Parse an explicit ladder such as ``"1s, 5s, 30s, 5m, 30m"``."""
    steps = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not steps:
        raise ValueError("a ladder needs at least one step")
    return steps


@dataclass(frozen=True)
class RetryPolicy:
    """Max attempts plus either exponential backoff with full jitter and a cap, or a ladder.

    ``max_attempts`` counts the first attempt: "3 retries" is ``max_attempts=4``.
    """

    max_attempts: int = 4
    base: timedelta = timedelta(seconds=2)
    cap: timedelta = timedelta(minutes=30)
    ladder: tuple[timedelta, ...] = field(default_factory=tuple)
    jitter: bool = True

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base <= timedelta(0) and not self.ladder:
            raise ValueError("base delay must be positive")
        if self.cap < self.base and not self.ladder:
            raise ValueError("cap must not be below the base delay")

    @classmethod
    def retries(cls, count: int, **kwargs) -> RetryPolicy:
        """A policy allowing ``count`` retries after the first attempt."""
        return cls(max_attempts=count + 1, **kwargs)

    @classmethod
    def from_ladder(cls, text: str, max_attempts: int | None = None) -> RetryPolicy:
        """A ladder policy; by default one retry per rung."""
        return cls._laddered(parse_ladder(text), max_attempts)

    @classmethod
    def from_steps(cls, seconds: Sequence[float], max_attempts: int | None = None) -> RetryPolicy:
        """A ladder policy from rungs already parsed into seconds (a ladder setting); one retry per rung."""
        if not seconds:
            raise ValueError("a ladder needs at least one step")
        return cls._laddered(tuple(timedelta(seconds=step) for step in seconds), max_attempts)

    @classmethod
    def _laddered(cls, steps: tuple[timedelta, ...], max_attempts: int | None) -> RetryPolicy:
        # An explicit 0 must reach __post_init__ and be refused, not fall back to the default.
        attempts = len(steps) + 1 if max_attempts is None else max_attempts
        return cls(max_attempts=attempts, ladder=steps, jitter=False)

    def ceiling(self, attempt: int) -> timedelta:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        if self.ladder:
            return self.ladder[min(attempt, len(self.ladder)) - 1]
        # Cap the exponent before multiplying so huge attempt numbers cannot overflow.
        exponent = min(attempt - 1, 62)
        seconds = min(self.cap.total_seconds(), self.base.total_seconds() * (2**exponent))
        return timedelta(seconds=seconds)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """How long to wait after failed attempt ``attempt``: full jitter in ``[0, ceiling]``."""
        ceiling = self.ceiling(attempt)
        if not self.jitter or self.ladder:
            return ceiling
        rng = rng or random
        return timedelta(seconds=rng.uniform(0, ceiling.total_seconds()))

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` attempts have been made and no more are allowed."""
        return attempts >= self.max_attempts

    def decide(self, attempts: int, kind: ErrorKind) -> Decision:
        """What to do after attempt ``attempts`` failed with an error of ``kind``."""
        if kind is ErrorKind.DEFERRED:
            return Decision.DEFER
        if kind is ErrorKind.PERMANENT or self.exhausted(attempts):
            return Decision.DEAD
        return Decision.RETRY


class Decision:
    """Outcomes of :meth:`RetryPolicy.decide` (plain constants keep them easy to log)."""

    RETRY = "retry"
    DEFER = "defer"
    DEAD = "dead"
