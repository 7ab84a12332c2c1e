"""Watching one of Backstop's loggers, which do not propagate to pytest's ``caplog`` once an app exists."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def records_of(name: str, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """The records at ``level`` or above that the ``name`` logger handles meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
