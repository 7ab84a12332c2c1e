"""Local TCP ports for processes the tests start, distinct between parallel (xdist) test workers."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

# Ports below the kernel's ephemeral range are never handed out by bind(0) or connect(), so a port
# chosen here cannot be taken by another test's ephemeral listener or client in the meantime; each
# xdist worker draws from its own slice, so two workers never pick the same one.
FIRST, SLICE = 20_000, 400
_next = itertools.count()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... (unset when not parallel)
    return int(name.removeprefix("gw") or 0)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A local port nobody listens on now, for a process told its port on the command line."""
    start = FIRST + _worker_index() * SLICE
    if start + SLICE <= _ephemeral_low():
        for _ in range(SLICE):
            port = start + next(_next) % SLICE
            if _bindable(port):
                return port
    with socket.socket() as sock:  # no room below the ephemeral range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
