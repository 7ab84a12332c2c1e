"""A local SMTP sink for development: accepts every message and keeps it as a .eml file."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller


class MaildirHandler:
    """aiosmtpd handler that writes each message to ``maildir`` and prints one line."""

    def __init__(self, maildir: Path):
        self.maildir = maildir
        self.maildir.mkdir(parents=True, exist_ok=True)
        self._counter = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        """Store the message and accept it."""
        with self._lock:
            self._counter += 1
            path = self.maildir / f"{time.time_ns()}-{self._counter}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        message = message_from_bytes(envelope.content, policy=default_policy)
        print(f"mail sink: to={','.join(envelope.rcpt_tos)} subject={message['subject']!r} -> {path.name}", flush=True)
        return "250 Message accepted for delivery"


def main() -> None:
    """Run the sink until SIGTERM or Ctrl+C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", type=Path, default=Path("instance/mail"))
    args = parser.parse_args()
    controller = Controller(MaildirHandler(args.maildir), hostname=args.host, port=args.port)
    controller.start()
    print(f"mail sink listening on smtp://{args.host}:{args.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
