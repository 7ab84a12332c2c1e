"""A real SMTP server (aiosmtpd) for the email tests, told how to answer: accept, 4xx, 5xx or hang.

It runs in a thread of the test process and records every message it accepts, so tests (and
worker processes pointed at it through SMTP_URL) exercise real SMTP conversations.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller

ACCEPT, TEMPORARY, PERMANENT, HANG = "accept", "4xx", "5xx", "hang"


@dataclass(frozen=True)
class Received:
    """One accepted message: envelope and parsed content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    tls: bool = False  # the message travelled over TLS (STARTTLS or implicit)
    login: str | None = None  # the AUTH user the session authenticated as


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, server, session, envelope):
        """Answer according to the server's mode; record what it accepts."""
        mode = self.server.mode
        self.server._count_data(envelope.content)
        if mode == TEMPORARY:
            return "451 4.3.0 Temporary failure, try again later"
        if mode == PERMANENT:
            return "550 5.1.1 Mailbox unavailable"
        if mode == HANG:
            # Never answer until released (the client's timeout is what is under test).
            await asyncio.get_running_loop().run_in_executor(None, self.server._release.wait, 30)
            return "451 4.3.0 Released after hanging"
        message = message_from_bytes(envelope.content, policy=default_policy)
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        login = session.auth_data.login.decode() if session.authenticated and session.auth_data else None
        received = Received(envelope.mail_from, tuple(envelope.rcpt_tos), message, tls, login)
        self.server._record(received)
        if self.server.on_accept is not None:
            self.server.on_accept(received)  # before the client hears "250": a test's fault injection
        return "250 2.0.0 OK queued as " + f"Q{len(self.server.messages):05d}"


class SmtpServer:
    """Controls and observes the server: ``mode``, ``messages``, ``url``."""

    def __init__(self, **controller_options):
        """``controller_options`` go to aiosmtpd's Controller: ``tls_context`` (STARTTLS),
        ``ssl_context`` (implicit TLS), ``authenticator``, ``require_starttls``, ..."""
        self.host = "127.0.0.1"
        self.mode = ACCEPT
        self.messages: list[Received] = []
        # Message-ID of every message offered with DATA, whatever the answer was.
        self.offered: list[str] = []
        # Called with each accepted message just before the client is told it was accepted.
        self.on_accept = None
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._controller = _EphemeralController(_Handler(self), hostname=self.host, port=0, **controller_options)

    @property
    def port(self) -> int:
        """The port the kernel gave the server (known once started)."""
        return self._controller.port

    @property
    def url(self) -> str:
        """SMTP_URL for this server."""
        return f"smtp://{self.host}:{self.port}"

    def set_mode(self, mode: str) -> None:
        """How to answer DATA from now on."""
        assert mode in (ACCEPT, TEMPORARY, PERMANENT, HANG)
        self.mode = mode

    def received(self) -> list[Received]:
        """A copy of the accepted messages."""
        with self._lock:
            return list(self.messages)

    def _record(self, received: Received) -> None:
        with self._lock:
            self.messages.append(received)

    def _count_data(self, content: bytes) -> None:
        message = message_from_bytes(content, policy=default_policy)
        with self._lock:
            self.offered.append(str(message["Message-ID"]))

    def start(self) -> SmtpServer:
        """Start listening."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Release hanging sessions and stop."""
        self._release.set()
        self._controller.stop()


class _EphemeralController(Controller):
    """aiosmtpd's Controller listening on port 0: the kernel picks a free port, so parallel tests never collide."""

    def _trigger_server(self):
        # Runs once the server listens and before start() returns: learn the port it was given.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server():
    """A running SMTP server in accept mode."""
    server = SmtpServer().start()
    yield server
    server.stop()
