"""Where does one Stripe webhook delivery spend its time? In process, no HTTP server, no load generator.

Calls the WSGI app (``wsgi.py``'s app, production settings, the queue bound) directly with a
prepared environ per distinct signed ``checkout.session.completed`` event, next to the
``/durable`` and ``/floor`` endpoints of ``bench/bare_app.py`` (one raw INSERT; the intake's two
rows with the bare driver) on the same database, and prints milliseconds per
request (timed without a profiler, after a warm-up), Python function calls per request (counted
with ``sys.setprofile``) and, with ``--top N``, the N functions with the most cumulative time
(cProfile) for Backstop's webhook.

    .venv/bin/python bench/intake_profile.py [--requests 2000] [--postgres] [--top 40] [--sort tottime]
        [--callers REGEX]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import hmac
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.intake_http import PLACEHOLDER, create_durable_table, sample_body


def environ_for(path: str, body: bytes, headers: dict[str, str]) -> dict:
    """A WSGI environ as gunicorn builds it for a POST of ``body``."""
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    environ.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return environ


class Deliveries:
    """Distinct signed events, each as a ready environ."""

    def __init__(self, secret: str):
        self.prefix, self.suffix = sample_body().split(PLACEHOLDER)
        self.key = secret.encode()
        self.number = 0
        self.run = os.urandom(4).hex()

    def next(self) -> dict:
        """The environ of the next distinct event."""
        self.number += 1
        body = f"{self.prefix}evt_prof{self.run}{self.number:09d}{self.suffix}".encode()
        timestamp = str(int(time.time()))
        signature = hmac.new(self.key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"Stripe-Signature": f"t={timestamp},v1={signature}"}
        return environ_for("/webhooks/stripe", body, headers)


def call(app, environ: dict) -> str:
    """One request through ``app``; its status line."""
    status = []
    chunks = app(environ, lambda line, headers, exc_info=None: status.append(line))
    for _ in chunks:
        pass
    if hasattr(chunks, "close"):
        chunks.close()
    return status[0]


def timed(app, environs: list[dict]) -> float:
    """Milliseconds per request over ``environs`` (each answered 200, or fail)."""
    started = time.perf_counter()
    for environ in environs:
        status = call(app, environ)
        if not status.startswith("200"):
            raise RuntimeError(f"answered {status}")
    return (time.perf_counter() - started) * 1000 / len(environs)


def calls_per_request(app, environs: list[dict]) -> float:
    """Python-level and C function calls per request, counted with ``sys.setprofile``."""
    counter = [0]

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            counter[0] += 1

    sys.setprofile(count)
    try:
        for environ in environs:
            call(app, environ)
    finally:
        sys.setprofile(None)
    return counter[0] / len(environs)


def main() -> None:
    """Time, count and (optionally) profile both endpoints on one backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL + Redis instead of SQLite + SqliteHuey")
    parser.add_argument("--top", type=int, default=0, help="print the N costliest functions (cProfile)")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key for --top")
    parser.add_argument("--callers", default="", help="with --top: also who calls the functions matching this regex")
    args = parser.parse_args()
    name = "postgres" if args.postgres else "sqlite"
    common.require_servers(args.postgres)
    with common.backend(name, "intake-profile") as backend:
        create_durable_table(backend)
        os.environ.update(backend.env())
        import wsgi
        from bench import bare_app

        bare_app.URL = backend.database_url
        common.log_to_file(backend.tmp / "backstop.log")
        deliveries = Deliveries(common.SECRETS["STRIPE_WEBHOOK_SECRET"])
        body = (deliveries.prefix + "evt_fixed" + deliveries.suffix).encode()

        def durable_environs(count, path="/durable"):
            return [environ_for(path, body, {}) for _ in range(count)]

        def backstop_environs(count):
            return [deliveries.next() for _ in range(count)]

        timed(bare_app.app, durable_environs(200))
        timed(bare_app.app, durable_environs(200, "/floor"))
        timed(wsgi.app, backstop_environs(200))
        durable_ms = timed(bare_app.app, durable_environs(args.requests))
        floor_ms = timed(bare_app.app, durable_environs(args.requests, "/floor"))
        backstop_ms = timed(wsgi.app, backstop_environs(args.requests))
        durable_calls = calls_per_request(bare_app.app, durable_environs(200))
        floor_calls = calls_per_request(bare_app.app, durable_environs(200, "/floor"))
        backstop_calls = calls_per_request(wsgi.app, backstop_environs(200))
        print(f"\n{name}: {'endpoint':<10}{'ms/req':>9}{'calls/req':>11}")
        for label, ms, calls in (
            ("durable", durable_ms, durable_calls),
            ("floor", floor_ms, floor_calls),
            ("backstop", backstop_ms, backstop_calls),
        ):
            print(f"{'':<{len(name) + 2}}{label:<10}{ms:>9.3f}{calls:>11.0f}")
        print(
            f"  ratio of times durable/backstop {durable_ms / backstop_ms:.2f}, floor/backstop "
            f"{floor_ms / backstop_ms:.2f}, durable/floor {durable_ms / floor_ms:.2f}"
        )
        if args.top:
            environs = backstop_environs(args.requests)
            profile = cProfile.Profile()
            profile.enable()
            for environ in environs:
                call(wsgi.app, environ)
            profile.disable()
            stats = pstats.Stats(profile).sort_stats(args.sort)
            stats.print_stats(args.top)
            if args.callers:
                stats.print_callers(args.callers)


if __name__ == "__main__":
    main()
