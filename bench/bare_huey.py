"""Bare Huey on Backstop's queue backend, no Backstop: the worker benchmark's baseline.

``huey_consumer bench.bare_huey.huey`` with the same flags as Backstop's consumer. The queue is
built from ``HUEY_URL`` / ``HUEY_NAME`` with the same options Backstop documents (SqliteHuey with
a 30 s timeout, RedisHuey; no result store).
"""

from __future__ import annotations

import os

from huey import RedisHuey, SqliteHuey


def queue_from_env(suffix: str = "-bare"):
    """SqliteHuey or RedisHuey, like ``HUEY_URL`` describes, in a queue (and file) of its own."""
    url = os.environ["HUEY_URL"]
    name = os.environ.get("HUEY_NAME", "bench") + suffix
    if url.startswith("sqlite:///"):
        filename = url.removeprefix("sqlite:///") + suffix.replace("-", ".")
        return SqliteHuey(name, filename=filename, results=False, timeout=30, fsync=False)
    return RedisHuey(name, url=url, results=False)


huey = queue_from_env()


@huey.task(name="bare_noop")
def bare_noop(number: int):
    """Do nothing."""
    return None
