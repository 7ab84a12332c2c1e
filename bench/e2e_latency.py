"""End to end: storefront purchases at a set arrival rate, from the webhook's 200 to the email accepted.

Real processes on one backend: ``gunicorn wsgi:app`` (2 sync workers), two ``flask --app wsgi
worker`` consumers (4 threads each), a stand-in for Stripe's API (Checkout Sessions) and a real
SMTP server (aiosmtpd) in this process, which records the time it accepted each message and its
Message-ID. Before the clock starts, one customer per purchase is made with ``POST
/api/customers`` and their welcome emails are drained. Then, at ``--rate`` purchases per second for
``--seconds``: ``POST /api/purchases`` (card, ``Idempotency-Key``), then its signed
``checkout.session.completed`` webhook delivered three times (the two duplicates right after the
first 200; a non-2xx answer is retried like Stripe would). Latency: from the first delivery's 200
to the SMTP server accepting that purchase's confirmation; p50 / p95 / p99 / max.

``--chaos``: every ~4 s (3-5 s) one consumer is ``kill -9``ed and restarted at once (alternating),
and the SMTP server answers 451 to 20 % of messages (random, seeded).

The ledger at the end (after the load, with the kills stopped, until everything settled or
``--drain-timeout``): every purchase completed, exactly one confirmation per purchase (distinct
Message-IDs; a second delivery of the same Message-ID is a duplicate, counted and shown per 100
kills), every customer exactly one welcome, no operation dead, waiting or running. Exits 1 on
any loss, extra confirmation, dead or stranded operation.

    .venv/bin/python bench/e2e_latency.py [--rate 10] [--seconds 30] [--chaos] [--postgres]

The settings the processes get are printed (engine timings shortened so a killed consumer's work
comes back within seconds; an email rate limit that lets 10 purchases/s through); ``--env
NAME=VALUE`` overrides any of them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from aiosmtpd.controller import Controller

from bench import common
from webapp.devdata import stripe_samples

PRICE_CENTS = 2500
SKU = "lead-bench"
SETTINGS = {
    "EMAIL_PROVIDERS": "smtp",
    "STRIPE_MAX_NETWORK_RETRIES": "0",
    "RECONCILE_INTERVAL_SECONDS": "1",
    "REDELIVER_AFTER_SECONDS": "2",
    "OPERATION_LEASE_SECONDS": "10",
    "WORKER_SHUTDOWN_TIMEOUT": "10",
    # 10 purchases/s is 600 confirmations a minute (plus the welcomes before): room for both.
    "EMAIL_RATE_GLOBAL_PER_MINUTE": "1200",
    # Enough retries that 20 % of 451s (and crashed attempts) never dead-letter an email.
    "EMAIL_RETRY_LADDER": "1s, 2s, 4s, 8s, 15s, 30s",
    "WEBHOOK_RETRY_LADDER": "1s, 2s, 4s, 8s, 15s",
}


# --- the SMTP server --------------------------------------------------------------------------


class Recorder:
    """aiosmtpd handler: accepts (or, under chaos, answers 451 to a share of) messages, recording each."""

    def __init__(self, fault_rate: float, seed: int = 7):
        self.fault_rate = fault_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: list[tuple[float, str, str, str]] = []  # (time, rcpt, Message-ID, subject)
        self.refused = 0

    async def handle_DATA(self, server, session, envelope):
        """451 a share of messages; record and accept the rest."""
        if self.fault_rate and self.random.random() < self.fault_rate:
            with self.lock:
                self.refused += 1
            return "451 4.3.0 Temporary failure, try again later"
        headers = BytesHeaderParser().parsebytes(envelope.content)
        with self.lock:
            self.accepted.append(
                (time.time(), envelope.rcpt_tos[0], str(headers["Message-ID"]), str(headers["Subject"]))
            )
        return "250 2.0.0 OK"

    def snapshot(self) -> list[tuple[float, str, str, str]]:
        """A copy of what was accepted."""
        with self.lock:
            return list(self.accepted)


class EphemeralController(Controller):
    """aiosmtpd's Controller on port 0: learn the port the kernel gave it."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


# --- the stand-in for Stripe's API ------------------------------------------------------------


class StripeStandIn(BaseHTTPRequestHandler):
    """Answers ``POST /v1/checkout/sessions`` like Stripe (abridged): session ``cs_bench_<purchase id>``."""

    def do_POST(self):
        """Create a Checkout Session."""
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        purchase_id = form.get("metadata[purchase_id]", ["0"])[0]
        session_id = f"cs_bench_{purchase_id}"
        body = json.dumps(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": "payment",
                "status": "open",
                "payment_status": "unpaid",
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "metadata": {"purchase_id": purchase_id},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet."""


def start_stripe() -> tuple[ThreadingHTTPServer, str]:
    """The stand-in on an ephemeral port, served from a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StripeStandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --- the consumers, and the chaos -------------------------------------------------------------


class Consumers:
    """Two ``flask --app wsgi worker`` processes; under chaos one is killed and restarted every ~4 s."""

    def __init__(self, env: dict, folder: Path, count: int = 2, threads: int = 4):
        self.env, self.folder, self.threads = env, folder, threads
        self.processes = [self._start(number) for number in range(count)]
        self.kills = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, number: int) -> common.Process:
        return common.flask_worker(self.env, self.folder / f"worker-{number}.log", self.threads)

    def wait_started(self) -> None:
        """Until every consumer logged its start."""
        for process in self.processes:
            common.wait_for(lambda p=process: common.started_offset(p), message="a consumer to start")

    def start_chaos(self, seed: int = 11) -> None:
        """Kill -9 and restart one consumer every 3-5 s, alternating, until :meth:`stop_chaos`."""
        rng = random.Random(seed)

        def run():
            number = 0
            while not self._stop.wait(rng.uniform(3.0, 5.0)):
                self.processes[number].kill9()
                self.kills += 1
                self.processes[number] = self._start(number)
                number = (number + 1) % len(self.processes)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop_chaos(self) -> None:
        """No more kills."""
        self._stop.set()
        if self._thread:
            self._thread.join()

    def stop(self) -> None:
        """SIGTERM every consumer."""
        for process in self.processes:
            process.stop()


# --- the load -----------------------------------------------------------------------------------


class Shop:
    """The storefront and Stripe's webhook deliveries, over HTTP."""

    def __init__(self, base: str, token: str, secret: str):
        self.base, self.token, self.secret = base, token, secret
        self.local = threading.local()
        self.webhook_retries = 0

    def http(self) -> requests.Session:
        """A keep-alive session per thread."""
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers["Authorization"] = f"Bearer {self.token}"
        return self.local.session

    def customer(self, number: int) -> int:
        """Make customer ``number``; its id."""
        answer = self.http().post(
            f"{self.base}/api/customers",
            json={"email": email_of(number), "name": f"Buyer {number}"},
            headers={"Idempotency-Key": f"customer-{number}"},
            timeout=60,
        )
        if answer.status_code != 201:
            raise RuntimeError(f"POST /api/customers answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()["id"]

    def purchase(self, customer_id: int, number: int) -> int:
        """A card purchase for the customer; its id."""
        answer = self.http().post(
            f"{self.base}/api/purchases",
            json={"customer_id": customer_id, "product_sku": SKU, "payment_method": "card"},
            headers={"Idempotency-Key": f"purchase-{number}"},
            timeout=60,
        )
        if answer.status_code != 201:
            raise RuntimeError(f"POST /api/purchases answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()["id"]

    def deliver(self, body: str, deadline: float) -> float:
        """POST one signed delivery until it is answered 200 (as Stripe retries); the time of the 200."""
        while True:
            timestamp = int(time.time())
            try:
                answer = self.http().post(
                    f"{self.base}/webhooks/stripe",
                    data=body.encode(),
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": stripe_samples.signature_header(body, self.secret, timestamp),
                    },
                    timeout=60,
                )
                if answer.status_code == 200:
                    return time.time()
            except requests.RequestException:
                pass
            self.webhook_retries += 1
            if time.time() > deadline:
                raise RuntimeError("a webhook delivery was never answered 200")
            time.sleep(0.5)


def email_of(number: int) -> str:
    """Customer ``number``'s address."""
    return f"buyer{number}@bench.example"


def arrive(shop: Shop, customer_id: int, number: int, acks: dict, errors: list) -> None:
    """One purchase and its three webhook deliveries; records the first 200's time."""
    try:
        purchase_id = shop.purchase(customer_id, number)
        event = stripe_samples.build_event(
            "checkout.session.completed",
            stripe_samples.PurchaseFacts(
                purchase_id=purchase_id,
                amount_cents=PRICE_CENTS,
                email=email_of(number),
                session_id=f"cs_bench_{purchase_id}",
            ),
        )
        body = stripe_samples.encode(event)
        deadline = time.time() + 120
        acks[purchase_id] = shop.deliver(body, deadline)
        for _ in range(2):  # Stripe's duplicates: the same event again
            shop.deliver(body, deadline)
    except Exception as exc:  # reported in the ledger; the run goes on
        errors.append(f"purchase {number}: {exc}")


# --- the ledger ---------------------------------------------------------------------------------


CONFIRMATION = re.compile(r"is confirmed \(#(\d+)\)")


def settled(engine, recorder: Recorder, purchases: int, customers: int) -> bool:
    """Every confirmation and welcome accepted and no operation waiting or running."""
    accepted = recorder.snapshot()
    confirmed = {int(m.group(1)) for _, _, _, subject in accepted if (m := CONFIRMATION.search(subject))}
    welcomed = {rcpt for _, rcpt, _, subject in accepted if subject.startswith("Welcome")}
    if len(confirmed) < purchases or len(welcomed) < customers:
        return False
    return not common.scalar(
        engine, "SELECT count(*) FROM operations WHERE state IN ('scheduled', 'pending', 'retrying', 'running')"
    )


def ledger(engine, recorder: Recorder, acks: dict, customers: dict, kills: int) -> tuple[list[str], list[float]]:
    """Print the ledger; return the problems and the latencies (seconds)."""
    accepted = recorder.snapshot()
    confirmations: dict[int, list[tuple[float, str]]] = defaultdict(list)
    welcomes: dict[str, set[str]] = defaultdict(set)
    for at, rcpt, message_id, subject in accepted:
        if match := CONFIRMATION.search(subject):
            confirmations[int(match.group(1))].append((at, message_id))
        elif subject.startswith("Welcome"):
            welcomes[rcpt].add(message_id)
    latencies, problems = [], []
    missing = [pid for pid in acks if not confirmations.get(pid)]
    extra = {pid: len({m for _, m in sent}) for pid, sent in confirmations.items() if len({m for _, m in sent}) > 1}
    duplicates = sum(len(sent) - len({m for _, m in sent}) for sent in confirmations.values())
    for purchase_id, acked in acks.items():
        if confirmations.get(purchase_id):
            latencies.append(min(at for at, _ in confirmations[purchase_id]) - acked)
    unknown = set(confirmations) - set(acks)
    states = dict(common.rows(engine, "SELECT state, count(*) FROM operations GROUP BY state"))
    dead = common.rows(engine, "SELECT id, name, error_message FROM operations WHERE state = 'dead' LIMIT 5")
    purchase_states = dict(common.rows(engine, "SELECT status, count(*) FROM purchases GROUP BY status"))
    fulfilment = dict(common.rows(engine, "SELECT fulfilment_status, count(*) FROM purchases GROUP BY 1"))
    events = dict(common.rows(engine, "SELECT processing_state, count(*) FROM stripe_events GROUP BY 1"))
    outcomes = dict(common.rows(engine, "SELECT outcome, count(*) FROM operation_attempts GROUP BY outcome"))
    circuit_waits = common.scalar(
        engine, "SELECT count(*) FROM operation_attempts WHERE outcome = 'deferred' AND error_message LIKE '%circuit%'"
    )
    welcome_missing = [email for email in customers if not welcomes.get(email)]
    welcome_extra = sum(1 for ids in welcomes.values() if len(ids) > 1)
    print("\nledger")
    print(f"  purchases acknowledged (webhook 200)  {len(acks)}")
    print(f"  purchases by status                   {purchase_states}; fulfilment {fulfilment}")
    print(f"  stripe events by processing state     {events}")
    print(f"  confirmations accepted                {sum(len(v) for v in confirmations.values())}")
    print(f"    purchases with none                 {len(missing)} (lost, or still waiting if the drain timed out)")
    print(f"    purchases with >1 Message-ID        {len(extra)}")
    per_kill = f" ({100 * duplicates / kills:.1f} per 100 kills)" if kills else ""
    print(f"    same Message-ID delivered again     {duplicates}{per_kill}")
    print(f"  welcomes: missing {len(welcome_missing)}, customers with >1 Message-ID {welcome_extra}")
    print(f"  operations by state                   {states}")
    print(f"  attempts by outcome                   {outcomes} ({circuit_waits} deferred by an open circuit)")
    print(f"  SMTP 451 answers {recorder.refused}, consumer kills {kills}")
    if missing:
        problems.append(f"{len(missing)} purchases without their confirmation at the end (e.g. {missing[:5]})")
    if extra:
        problems.append(f"{len(extra)} purchases got more than one distinct confirmation")
    if unknown:
        problems.append(f"confirmations for purchases never acknowledged: {sorted(unknown)[:5]}")
    if welcome_missing or welcome_extra:
        problems.append(f"welcomes: {len(welcome_missing)} missing, {welcome_extra} with several Message-IDs")
    if dead:
        problems.append(f"{states.get('dead')} dead operations, e.g. {[tuple(row) for row in dead]}")
    waiting = sum(states.get(s, 0) for s in ("scheduled", "pending", "retrying", "running"))
    if waiting:
        problems.append(f"{waiting} operations still waiting or running (stranded)")
    if purchase_states.get("completed", 0) != len(acks):
        problems.append(f"purchases by status {purchase_states}, expected {len(acks)} completed")
    return problems, latencies


# --- the run ------------------------------------------------------------------------------------


def run(name: str, args: argparse.Namespace) -> list[str]:
    """One backend: set up, load, drain, ledger; returns the problems."""
    count = int(args.rate * args.seconds)
    recorder = Recorder(0.2 if args.chaos else 0.0)
    controller = EphemeralController(recorder, hostname="127.0.0.1", port=0)
    controller.start()
    stripe_server, stripe_url = start_stripe()
    problems: list[str] = []
    with common.backend(name, "e2e", keep=args.keep) as backend:
        common.cli(backend, "products", "add", SKU, "--name", "Lead: Bench", "--kind", "lead", "--price-cents", "2500")
        token = common.cli(backend, "tokens", "create", "--scope", "storefront", "--name", "bench").split()[-1]
        env = backend.env(
            SMTP_URL=f"smtp://127.0.0.1:{controller.port}", STRIPE_API_BASE=stripe_url, **SETTINGS, **args.env
        )
        print(f"\n{name}: settings {', '.join(f'{k}={v}' for k, v in {**SETTINGS, **args.env}.items())}")
        web = common.Gunicorn("wsgi:app", env, backend.tmp / "gunicorn.log", workers=2)
        consumers = Consumers(env, backend.tmp)
        engine = common.sql_engine(backend)
        shop = Shop(web.url, token, common.SECRETS["STRIPE_WEBHOOK_SECRET"])
        try:
            consumers.wait_started()
            with ThreadPoolExecutor(16) as pool:
                ids = list(pool.map(shop.customer, range(count)))
            customers = dict(zip((email_of(n) for n in range(count)), ids, strict=True))
            common.wait_for(
                lambda: len({r for _, r, _, s in recorder.snapshot() if s.startswith("Welcome")}) >= count,
                timeout=args.drain_timeout,
                interval=0.2,
                message="the welcome emails",
            )
            print(f"  {count} customers made and welcomed; load: {args.rate}/s for {args.seconds} s")
            acks: dict[int, float] = {}
            errors: list[str] = []
            if args.chaos:
                consumers.start_chaos()
            started = time.perf_counter()
            with ThreadPoolExecutor(64) as pool:
                for number in range(count):
                    delay = started + number / args.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(arrive, shop, ids[number], number, acks, errors)
            loaded = time.perf_counter() - started
            consumers.stop_chaos()
            try:
                common.wait_for(
                    lambda: settled(engine, recorder, len(acks), count),
                    timeout=args.drain_timeout,
                    interval=0.5,
                    message="everything to settle",
                )
            except TimeoutError as exc:
                problems.append(str(exc))
            print(f"  load phase (until the last delivery was answered) {loaded:.1f} s")
            print(f"  webhook deliveries retried after a non-200: {shop.webhook_retries}")
            found, latencies = ledger(engine, recorder, acks, customers, consumers.kills)
            problems += errors + found
            print(
                f"\n  webhook 200 -> email accepted, {len(latencies)} purchases: "
                f"p50 {common.percentile(latencies, 0.50):.3f} s, p95 {common.percentile(latencies, 0.95):.3f} s, "
                f"p99 {common.percentile(latencies, 0.99):.3f} s, max {max(latencies, default=float('nan')):.3f} s"
            )
        finally:
            consumers.stop_chaos()
            consumers.stop()
            web.stop()
            engine.dispose()
            stripe_server.shutdown()
            controller.stop()
    return [f"{name}: {problem}" for problem in problems]


def main() -> None:
    """Each backend in turn; exit 1 on any problem in a ledger."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="purchases per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load phase")
    parser.add_argument("--chaos", action="store_true", help="kill -9 a consumer every ~4 s; 20%% SMTP 451")
    parser.add_argument("--postgres", action="store_true", help="also PostgreSQL + Redis")
    parser.add_argument("--only-postgres", action="store_true")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs and SQLite files")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the app's processes")
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    names = ["sqlite"] * (not args.only_postgres) + ["postgres"] * (args.postgres or args.only_postgres)
    common.require_servers("postgres" in names)
    problems = []
    for name in names:
        problems += run(name, args)
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("\nledger ok: every purchase exactly one confirmation, nothing lost, dead or stranded")


if __name__ == "__main__":
    main()
