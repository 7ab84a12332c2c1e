"""Clients that keep requests flowing while a test breaks something, and what they saw.

Each client sends its requests one after the other and repeats a request that was answered
503 (or another status the caller names as "come back later"), as Stripe and a careful
storefront do, until it is accepted or a deadline passes. Every answer is recorded, with how
long it took, so a test can say how many 503s there were, whether any request hung, and how
long service took to come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

RETRY_PAUSE = 0.1  # between a 503 and the next try of the same request
REQUEST_TIMEOUT = 15.0  # a request still unanswered after this long has hung


@dataclass
class Answer:
    """One HTTP exchange: when it started and ended (monotonic), its status (0: no answer)."""

    item: str
    started: float
    ended: float
    status: int
    error: str | None = None

    @property
    def seconds(self) -> float:
        """How long the request took."""
        return self.ended - self.started


@dataclass
class Load:
    """Requests made under a fault, and their answers."""

    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, dict] = field(default_factory=dict)  # item -> accepted JSON body
    given_up: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, answer: Answer) -> None:
        """Keep one answer."""
        with self._lock:
            self.answers.append(answer)

    def statuses(self) -> dict[int, int]:
        """How many answers had each status."""
        counts: dict[int, int] = {}
        for answer in self.answers:
            counts[answer.status] = counts.get(answer.status, 0) + 1
        return dict(sorted(counts.items()))

    def slowest(self) -> float:
        """The longest any one request took, in seconds."""
        return max((answer.seconds for answer in self.answers), default=0.0)

    def first_accepted_after(self, moment: float) -> float | None:
        """When the first request started after ``moment`` was accepted (2xx), or None."""
        times = [a.ended for a in self.answers if a.started >= moment and 200 <= a.status < 300]
        return min(times, default=None)


Send = Callable[[requests.Session], requests.Response]


def run_until_accepted(
    load: Load, item: str, send: Send, session: requests.Session, *, deadline: float, again=(503,)
) -> None:
    """Send ``item`` until a 2xx (kept in ``load.accepted``), or until ``deadline`` (given up)."""
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = send(session)
        except requests.RequestException as exc:
            load.record(Answer(item, started, time.monotonic(), 0, f"{type(exc).__name__}: {exc}"))
            time.sleep(RETRY_PAUSE)
            continue
        load.record(Answer(item, started, time.monotonic(), response.status_code))
        if 200 <= response.status_code < 300:
            with load._lock:
                load.accepted[item] = response.json()
            return
        if response.status_code not in again and not _again(response, again):
            return  # a final refusal: recorded, not repeated
        time.sleep(RETRY_PAUSE)
    with load._lock:
        load.given_up.append(item)


def _again(response: requests.Response, again) -> bool:
    """Whether the answer's error code (``{"error": ...}``) is one to repeat after a pause."""
    try:
        code = response.json().get("error")
    except ValueError:
        return False
    return code in again


def drive(load: Load, items: dict[str, Send], *, clients: int, deadline: float, again=(503,)) -> Load:
    """Send every item from ``clients`` concurrent clients, each repeating until accepted; wait for all."""
    names = list(items)
    shares = [names[n::clients] for n in range(clients)]

    def client(share: list[str]) -> None:
        with requests.Session() as session:
            for item in share:
                run_until_accepted(load, item, items[item], session, deadline=deadline, again=again)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return load
