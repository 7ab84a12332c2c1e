"""Stripe webhook intake over HTTP against its own baselines, measured in the same run with wrk.

gunicorn with sync workers (2), wrk with 16 connections for a fixed duration, on each backend:

  (a) bare      ``bench.bare_app`` ``POST /bare``: a Flask endpoint that reads the body;
  (b) durable   ``POST /durable``: the same plus one raw INSERT + COMMIT into the same database
                (the durable-write limit);
  (f) floor     ``POST /floor``: the same app writing what the intake writes (an ``operations`` row
                and a ``stripe_events`` row, one transaction) with the bare driver into Backstop's
                tables and indexes: the durable-write limit of Backstop's schema;
  (r) floor+ring ``POST /floor-rung``: (f) and then one task enqueued by bare Huey on the same queue
                backend, the doorbell a design that rings per event cannot skip;
  (c) backstop  ``gunicorn wsgi:app`` ``POST /webhooks/stripe`` with distinct events, each signed
                as Stripe signs them (HMAC-SHA256 of "<t>.<body>" with the endpoint secret).

Prints req/s, p50 and p99 of each and the ratios (c)/(b) (the target), (c)/(f), (f)/(b), (r)/(b) and (c)/(r).
Afterwards it checks the database: every stored event has its operation, and at least as many
events were stored with their operation as Backstop answered 2xx (so no 2xx was given for an
event that was not committed). Exits 1 otherwise.

    .venv/bin/python bench/intake_http.py [--duration 10] [--connections 16] [--postgres]

Needs ``wrk`` (Debian package; installed with apt-get when missing and running as root).
SQLite: SQLite + SqliteHuey; ``--postgres``: also PostgreSQL (127.0.0.1:5432) + Redis queue.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.bare_app import FLOOR_TYPE

LUA = Path(__file__).resolve().parent / "wrk_intake.lua"
PLACEHOLDER = "evt_BENCHPLACEHOLDER"


@dataclass
class Load:
    """What wrk measured."""

    label: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    wrapped: int = 0
    worker_cpu_seconds: float = 0.0  # the gunicorn workers' CPU during the run

    @property
    def cpu_ms_per_request(self) -> float:
        """The workers' CPU milliseconds per request (the app's own cost; wrk and the database excluded)."""
        return self.worker_cpu_seconds * 1000 / self.requests

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    @property
    def ok(self) -> int:
        """Responses with a 2xx/3xx status."""
        return self.requests - self.non_2xx


def ensure_wrk() -> str:
    """The wrk binary, installing Debian's package when missing (as root), or exit saying how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("wrk is needed: sudo apt-get install wrk")


def sample_body() -> str:
    """A realistic ``checkout.session.completed`` body (Stripe's pretty-printed JSON)."""
    from webapp.devdata import stripe_samples

    event = stripe_samples.build_event(
        "checkout.session.completed", stripe_samples.PurchaseFacts(purchase_id=1), event_id=PLACEHOLDER
    )
    return json.dumps(event, indent=2)


def write_signed_events(folder: Path, template: str, count: int, secret: str, tag: str) -> tuple[Path, Path, Path]:
    """``count`` distinct event ids signed over prefix + id + suffix; the three files for the Lua script."""
    prefix, suffix = template.split(PLACEHOLDER)
    timestamp = str(int(time.time()))
    key = secret.encode()
    head, tail = f"{timestamp}.{prefix}".encode(), suffix.encode()
    run = os.urandom(4).hex()
    lines = []
    for number in range(count):
        event_id = f"evt_{tag}{run}{number:09d}"
        signature = hmac.new(key, head + event_id.encode() + tail, hashlib.sha256).hexdigest()
        lines.append(f"{timestamp} {event_id} {signature}\n")
    paths = folder / f"{tag}-events.txt", folder / "prefix.json", folder / "suffix.json"
    paths[0].write_text("".join(lines))
    paths[1].write_text(prefix)
    paths[2].write_text(suffix)
    return paths


def run_wrk(server: common.Gunicorn, path: str, label: str, args: argparse.Namespace, script_args: list[str]) -> Load:
    """One wrk run against ``server``; parse the line the Lua script prints, and note the workers' CPU."""
    url = server.url + path
    command = [args.wrk, "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{args.duration}s"]
    command += ["--timeout", "30s", "-s", str(LUA), url, "--", *script_args]
    cpu = server.workers_cpu_seconds()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = server.workers_cpu_seconds() - cpu
    match = re.search(r"BENCH-RESULT (.*)", output)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    values = {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}
    return Load(
        label=label,
        requests=values["requests"],
        seconds=values["duration_us"] / 1e6,
        non_2xx=values["status"],
        socket_errors=values["connect"] + values["read"] + values["write"] + values["timeout"],
        p50_ms=values["p50_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        wrapped=values["wrapped"],
        worker_cpu_seconds=cpu,
    )


def create_durable_table(backend: common.Backend) -> None:
    """The table the durable-write endpoint inserts into, in the same database as Backstop's."""
    serial = "INTEGER PRIMARY KEY" if backend.name == "sqlite" else "BIGSERIAL PRIMARY KEY"
    engine = common.sql_engine(backend)
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text(f"CREATE TABLE bench_intake (id {serial}, received_at DOUBLE PRECISION, body TEXT)"))
    engine.dispose()


def warm_up(url: str, count: int = 20) -> None:
    """A few requests so every gunicorn worker has its connections and caches before the clock starts."""
    import requests

    for _ in range(count):
        requests.post(url, data=b"{}", timeout=180)  # a worker may still be importing the app


def measure_baselines(backend: common.Backend, args: argparse.Namespace) -> list[Load]:
    """(a), (b), (f) and (r) on ``bench.bare_app``."""
    create_durable_table(backend)
    body = backend.tmp / "body.json"
    body.write_text(sample_body().replace(PLACEHOLDER, "evt_fixed"))
    server = common.Gunicorn("bench.bare_app:app", backend.env(), backend.tmp / "bare.log", workers=args.workers)
    try:
        loads = []
        paths = (("bare", "/bare"), ("durable", "/durable"), ("floor", "/floor"), ("floor+ring", "/floor-rung"))
        for label, path in paths:
            warm_up(server.url + path)
            loads.append(run_wrk(server, path, label, args, ["fixed", str(body)]))
        return loads
    finally:
        server.stop()


def measure_backstop(backend: common.Backend, args: argparse.Namespace) -> tuple[Load, int]:
    """(c): signed distinct events to Backstop's webhook; returns the load and the 2xx of the warm-up."""
    import requests

    secret = common.SECRETS["STRIPE_WEBHOOK_SECRET"]
    template = sample_body()
    warm, _, _ = write_signed_events(backend.tmp, template, 20, secret, "warm")
    events, prefix, suffix = write_signed_events(backend.tmp, template, args.events, secret, "bench")
    server = common.Gunicorn("wsgi:app", backend.env(), backend.tmp / "backstop.log", workers=args.workers)
    try:
        warm_ok = 0
        for line in warm.read_text().splitlines():
            timestamp, event_id, signature = line.split()
            answer = requests.post(
                server.url + "/webhooks/stripe",
                data=(prefix.read_text() + event_id + suffix.read_text()).encode(),
                headers={"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={signature}"},
                timeout=180,  # a worker may still be importing the app
            )
            if answer.status_code != 200:
                raise RuntimeError(f"warm-up delivery answered {answer.status_code}: {answer.text[:300]}")
            warm_ok += 1
        script = ["signed", str(events), str(prefix), str(suffix), str(args.wrk_threads)]
        return run_wrk(server, "/webhooks/stripe", "backstop", args, script), warm_ok
    finally:
        server.stop()


def verify(backend: common.Backend, answered_ok: int) -> list[str]:
    """Problems found in the database: events without their operation, fewer stored than 2xx'd."""
    engine = common.sql_engine(backend)
    # /floor's rows (bench.floor) are the baseline's, not Backstop's.
    stored = common.scalar(engine, f"SELECT count(*) FROM stripe_events WHERE type <> '{FLOOR_TYPE}'")
    with_operation = common.scalar(
        engine,
        "SELECT count(*) FROM stripe_events e JOIN operations o ON o.id = e.operation_id "
        "WHERE o.name = 'stripe.' || e.type",
    )
    operations = common.scalar(engine, "SELECT count(*) FROM operations WHERE name LIKE 'stripe.%'")
    engine.dispose()
    problems = []
    if with_operation != stored:
        problems.append(f"{stored - with_operation} stored events without their operation")
    if operations != stored:
        problems.append(f"{operations} stripe operations for {stored} events")
    if stored < answered_ok:
        problems.append(f"{answered_ok} deliveries answered 2xx but only {stored} events stored: LOST")
    print(f"  ledger: {answered_ok} answered 2xx, {stored} events stored, {with_operation} with their operation")
    return problems


def report(name: str, loads: list[Load]) -> None:
    """The table for one backend."""
    columns = f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'non-2xx':>9}{'sock err':>9}"
    print(f"\n{name}: {'endpoint':<10}{columns}")
    for load in loads:
        print(
            f"{'':<{len(name) + 2}}{load.label:<10}{load.rate:>9.0f}{load.p50_ms:>9.1f}{load.p99_ms:>9.1f}"
            f"{load.cpu_ms_per_request:>12.3f}{load.non_2xx:>9}{load.socket_errors:>9}"
        )
    bare, durable, floor, rung, backstop = loads
    print(
        f"  ratio backstop/durable {backstop.rate / durable.rate:.2f}, "
        f"backstop/floor {backstop.rate / floor.rate:.2f}, floor/durable {floor.rate / durable.rate:.2f}, "
        f"floor+ring/durable {rung.rate / durable.rate:.2f}, backstop/(floor+ring) {backstop.rate / rung.rate:.2f}, "
        f"durable/bare {durable.rate / bare.rate:.2f}"
    )


def main() -> None:
    """Measure each backend, print the tables, check the ledger."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--events", type=int, default=None, help="signed events in the pool (default 6000/s)")
    parser.add_argument("--postgres", action="store_true", help="also PostgreSQL + Redis queue")
    parser.add_argument("--only-postgres", action="store_true", help="PostgreSQL + Redis queue only")
    args = parser.parse_args()
    args.events = args.events or args.duration * 6000
    args.wrk = ensure_wrk()
    names = ["sqlite"] * (not args.only_postgres) + ["postgres"] * (args.postgres or args.only_postgres)
    common.require_servers("postgres" in names)
    problems = []
    for name in names:
        with common.backend(name, "intake") as backend:
            loads = measure_baselines(backend, args)
            backstop, warm_ok = measure_backstop(backend, args)
            loads.append(backstop)
            report(name, loads)
            if backstop.wrapped:
                problems.append(f"{name}: the event pool ran out ({backstop.wrapped} wraps); use --events")
            problems += [f"{name}: {problem}" for problem in verify(backend, backstop.ok + warm_ok)]
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("\nledger ok: every 2xx'd event is stored with its operation")


if __name__ == "__main__":
    main()
