"""A ``redis-server`` of one test alone, on a port of its own: the shared one on 6379 serves other tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import redis

from tests.support import servers
from tests.support.polling import wait_for
from tests.support.ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> None:
    """Skip (fail in CI) when the ``redis-server`` binary is missing."""
    servers.require(os.access(REDIS_SERVER, os.X_OK), f"redis-server is not installed at {REDIS_SERVER}")


class PrivateRedis:
    """A ``redis-server`` of this test alone, without persistence, that can be stopped, restarted and frozen."""

    def __init__(self, folder):
        self.port = free_port()
        self.folder = folder
        self.proc = None

    @property
    def url(self) -> str:
        """HUEY_URL for this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start listening (again) on the same port."""
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: self._pong(client), message="redis-server to answer")
        return self

    @staticmethod
    def _pong(client) -> bool:
        try:
            return client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server (its queued messages are lost with it, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must be able to exit
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nobody answers them."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT."""
        self.proc.send_signal(signal.SIGCONT)
