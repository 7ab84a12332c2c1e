"""Fuzzing every surface in process: generated requests never get a 5xx, a 4xx never writes a row.

Hypothesis generates requests to the Stripe webhook (signed and unsigned), the storefront
API, the admin API and the admin console's forms (logged in, with the CSRF token), with the
text that breaks things: NUL (PostgreSQL text refuses it), lone surrogates (no UTF-8
encoding), ids beyond BIGINT, absurd nesting, wrong types. It runs on SQLite and on
PostgreSQL. The Flask test client is used in process and no app context is held open across
requests, so each request gets its own database session, as under gunicorn.

``FUZZ_EXAMPLES`` sets the number of requests per backend (default 1,000, so 2,000 a run);
the long run in docs/reliability.md is ``FUZZ_EXAMPLES=10000 .venv/bin/pytest tests/app/test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from tests.conftest import make_app
from tests.support import stripe_signing as signing
from tests.support.console import PASSWORD, csrf_from, login, make_op
from webapp.devdata.stripe_samples import SUPPORTED_TYPES, PurchaseFacts, build_event
from webapp.extensions import db
from webapp.models import BulkJob, Customer, Operation, Product, Purchase, StripeEvent
from webapp.services.access import tokens
from webapp.services.console import admins
from webapp.services.engine import runner

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
# FUZZ_KEEP_GOING=1: count every problem instead of stopping at the first (for the figures).
KEEP_GOING = os.environ.get("FUZZ_KEEP_GOING") == "1"
BATCH = 10
SECRET = "whsec_fuzz_0b7e"
ADMIN_EMAIL = "fuzz-admin@example.com"
SURFACES = ("webhook_signed", "webhook_unsigned", "storefront", "admin_api", "admin_forms")

# --- what goes into a request ----------------------------------------------------------------

# What no database can store: NUL (PostgreSQL) and lone surrogates (no UTF-8 encoding).
BREAKING = st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d"])
NASTY = st.one_of(
    BREAKING,
    st.sampled_from(
        [
            "\u202e",
            "\ufeff",
            "😀",
            "é",
            "'",
            '"',
            "\\",
            "<script>alert(1)</script>",
            "%00",
            "../",
            "",
            " ",
            "\n",
            "9" * 25,
            str(2**63),
            str(2**63 - 1),
            str(-(2**63) - 1),
            str(10**20),
            "-1",
            "0",
            "1",
            "\uff11",
            "1e3",
            "x" * 2100,
        ]
    ),
)
TEXT = st.one_of(NASTY, st.text(max_size=20), st.lists(st.one_of(NASTY, st.text(max_size=4)), max_size=4).map("".join))
INTS = st.one_of(st.integers(-5, 50), st.sampled_from([2**53, 2**63 - 1, 2**63, -(2**63) - 1, 10**20]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False), TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=5,
)
# Hostile values are drawn as often as anything else, so 1,000 requests meet each of them.
HOSTILE = st.one_of(BREAKING, NASTY, INTS, JSON)
DEEP = st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)


def _encoded(text: str) -> str:
    """Percent-encoded UTF-8, lone surrogates as their raw (invalid) bytes, as a hostile client sends them."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _form(pairs) -> bytes:
    return "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in pairs).encode("ascii")


def _header_text(text: str) -> str:
    """``text`` as a header value can carry it (its UTF-8 bytes read as Latin-1, no control characters)."""
    return "".join(c for c in text.encode("utf-8", "surrogatepass").decode("latin-1") if c >= " " and c != "\x7f")


def _json_bytes(value) -> bytes:
    """JSON text for any generated value (lone surrogates become ``\\ud800`` escapes, as json.dumps writes them)."""
    return json.dumps(value).encode("ascii")


@dataclass
class Shop:
    """The rows the requests aim at, made once per backend."""

    admin_token: str = ""
    storefront_token: str = ""
    customer_ids: list = field(default_factory=list)
    purchase_ids: list = field(default_factory=list)
    operation_ids: list = field(default_factory=list)
    skus: list = field(default_factory=list)
    names: list = field(default_factory=list)


def _id_strategy(known: list):
    return st.one_of(st.sampled_from(known), st.sampled_from(known), INTS)


def _path_part(known: list):
    return st.one_of(_id_strategy(known).map(str), TEXT).map(lambda v: _encoded(str(v)) or "x")


def _filters():
    keys = st.sampled_from(
        ["kind", "name", "status", "range", "since", "until", "q", "fingerprint", "cursor", "limit"]
        + ["action", "actor", "target", "run_at", "attempts", "bulk_action"]
    )
    values = st.one_of(
        TEXT,
        st.sampled_from(["email", "webhook", "unresolved", "all", "resolved", "24h", "7d", "2026-01-01T00:00"]),
        st.sampled_from(["scheduled", "retrying", "due", "run_now", "reschedule", "operation.retry", "operation:1"]),
        st.sampled_from(["2030-01-01T00:00", "0", "21", "3", "-1", "1e9"]),
        st.sampled_from(["2026-01-01T00:00:00_5", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00+14:00"]),
    )
    return st.lists(st.tuples(keys, values), max_size=4)


@st.composite
def storefront_request(draw, shop: Shop):
    """A call to the storefront API."""
    headers = {"Authorization": f"Bearer {draw(st.sampled_from([shop.storefront_token, shop.admin_token, 'nope']))}"}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.sampled_from(["k1", "k2", "", "x" * 300, "\x7f"]))
    kind = draw(st.sampled_from(["customer", "purchase", "get", "raw"]))
    if kind == "get":
        return "GET", f"/api/purchases/{draw(_path_part(shop.purchase_ids))}", {"headers": headers}
    path = "/api/customers" if kind == "customer" else "/api/purchases"
    if kind == "customer":
        body = {
            "email": draw(st.one_of(st.emails(), HOSTILE)),
            "name": draw(st.one_of(st.just("Ada"), HOSTILE)),
        }
    elif kind == "purchase":
        body = {
            "customer_id": draw(st.one_of(_id_strategy(shop.customer_ids), HOSTILE)),
            "product_sku": draw(st.one_of(st.sampled_from(shop.skus), HOSTILE)),
            "payment_method": draw(st.one_of(st.sampled_from(["credits", "card"]), TEXT)),
        }
    else:
        body = None
    if body is not None and draw(st.booleans()):
        body.update(draw(st.dictionaries(TEXT, HOSTILE, max_size=2)))
    data = _json_bytes(body) if body is not None else draw(st.one_of(DEEP.map(str.encode), st.binary(max_size=60)))
    content_type = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", "application/json; charset=latin-1"]))
    return "POST", path, {"data": data, "headers": headers, "content_type": content_type}


@st.composite
def admin_api_request(draw, shop: Shop):
    """A call to the admin JSON API."""
    headers = {"Authorization": f"Bearer {draw(st.sampled_from([shop.admin_token] * 5 + [shop.storefront_token]))}"}
    op = draw(_path_part(shop.operation_ids))
    name = draw(st.one_of(st.sampled_from(shop.names), TEXT.map(lambda t: _encoded(t) or "x")))
    body = draw(
        st.one_of(
            st.fixed_dictionaries({"note": HOSTILE}).map(_json_bytes),
            st.fixed_dictionaries({"note": HOSTILE}).map(_json_bytes),
            st.fixed_dictionaries({"filters": st.one_of(_filters().map(dict), HOSTILE)}).map(_json_bytes),
            st.fixed_dictionaries({"filters": st.dictionaries(st.sampled_from(["q", "name", "kind"]), HOSTILE)}).map(
                _json_bytes
            ),
            st.fixed_dictionaries(
                {},
                optional={
                    "run_at": st.one_of(HOSTILE, st.sampled_from(["2030-01-01T00:00Z", "2000-01-01", "9999-12-31"])),
                    "attempts": st.one_of(HOSTILE, st.integers(-5, 30)),
                    "filters": st.fixed_dictionaries({"status": st.sampled_from(["scheduled", "retrying", "due"])}),
                },
            ).map(_json_bytes),
            JSON.map(_json_bytes),
            DEEP.map(str.encode),
            st.binary(max_size=40),
            st.just(b""),
        )
    )
    query = urlencode(draw(_filters()), quote_via=lambda s, *a: _encoded(s))
    method, path = draw(
        st.sampled_from(
            [
                ("GET", f"/api/admin/operations?{query}"),
                ("GET", f"/api/admin/operations/{op}"),
                ("POST", f"/api/admin/operations/{op}/retry"),
                ("POST", f"/api/admin/operations/{op}/resolve"),
                ("POST", f"/api/admin/operations/{op}/cancel"),
                ("POST", f"/api/admin/operations/{op}/run-now"),
                ("POST", f"/api/admin/operations/{op}/reschedule"),
                ("POST", "/api/admin/operations/bulk-retry"),
                ("POST", "/api/admin/operations/bulk-run-now"),
                ("POST", "/api/admin/operations/bulk-reschedule"),
                ("POST", "/api/admin/operations/bulk-cancel"),
                ("GET", f"/api/admin/audit-log?{query}"),
                ("GET", f"/api/admin/bulk-jobs/{op}"),
                ("POST", f"/api/admin/bulk-jobs/{op}/cancel"),
                ("GET", f"/api/admin/dead-letter-queue?{query}"),
                ("GET", f"/api/admin/recent-failures?{query}"),
                ("GET", f"/api/admin/delivery-stats?{query.replace('limit', 'range')}"),
                ("GET", f"/api/admin/health?{query.replace('limit', 'window')}"),
                ("GET", "/api/admin/queue-health"),
                ("GET", "/api/admin/pauses"),
                ("POST", f"/api/admin/pauses/{name}/pause"),
                ("POST", f"/api/admin/pauses/{name}/resume"),
                ("DELETE", f"/api/admin/operations/{op}"),
            ]
        )
    )
    kwargs = {"headers": headers}
    if method == "POST":
        kwargs.update(data=body, content_type="application/json")
    return method, path, kwargs


@st.composite
def admin_form_request(draw, shop: Shop):
    """A page, partial or form post of the console, as a logged-in admin with the CSRF token."""
    op = draw(_path_part(shop.operation_ids))
    name = draw(st.one_of(st.sampled_from(shop.names), TEXT.map(lambda t: _encoded(t) or "x")))
    fingerprint = draw(st.one_of(st.just("none"), st.text("0123456789abcdef", min_size=16, max_size=16), TEXT))
    fingerprint = _encoded(fingerprint) or "x"
    filters = draw(_filters())
    query = urlencode(filters, quote_via=lambda s, *a: _encoded(s))
    method, path = draw(
        st.sampled_from(
            [
                ("GET", f"/admin/failed-operations?{query}"),
                ("GET", f"/admin/partials/operations?{query}"),
                ("GET", f"/admin/issues?{query}"),
                ("GET", f"/admin/failed-operations/export.csv?{query}"),
                ("GET", f"/admin/failed-operations/export.json?{query}"),
                ("GET", f"/admin/operations-health?{query.replace('range', 'window')}"),
                ("GET", f"/admin/partials/health/cards?{query.replace('range', 'window')}"),
                ("GET", f"/admin/partials/operations/{op}/row"),
                ("GET", f"/admin/partials/operations/{op}/details"),
                ("GET", f"/admin/partials/bulk-jobs/{op}"),
                ("POST", f"/admin/operations/{op}/retry"),
                ("POST", f"/admin/operations/{op}/resolve"),
                ("POST", f"/admin/operations/{op}/cancel"),
                ("POST", f"/admin/operations/{op}/run-now"),
                ("POST", f"/admin/operations/{op}/reschedule"),
                ("GET", f"/admin/audit?{query}"),
                ("GET", f"/admin/partials/audit?{query}"),
                ("POST", "/admin/operations/bulk"),
                ("POST", "/admin/bulk-jobs"),
                ("POST", f"/admin/bulk-jobs/{op}/start"),
                ("POST", f"/admin/bulk-jobs/{op}/cancel"),
                ("POST", f"/admin/issues/{fingerprint}/retry"),
                ("POST", f"/admin/issues/{fingerprint}/resolve"),
                ("POST", f"/admin/pauses/{name}/{draw(st.sampled_from(['pause', 'resume', 'x']))}"),
            ]
        )
    )
    kwargs = {"headers": {"HX-Request": "true"} if draw(st.booleans()) else {}}
    if method == "POST":
        pairs = list(filters)
        pairs += [("note", t) for t in draw(st.lists(st.one_of(NASTY, TEXT), max_size=1))]
        pairs.append(("action", draw(st.one_of(st.sampled_from(["retry", "resolve"]), NASTY))))
        pairs += [
            ("ids", str(v)) for v in draw(st.lists(st.one_of(_id_strategy(shop.operation_ids), NASTY), max_size=3))
        ]
        kwargs.update(data=_form(pairs), content_type="application/x-www-form-urlencoded")
        kwargs["headers"]["X-CSRFToken"] = "{csrf}"
    return method, path, kwargs


@st.composite
def webhook_request(draw, shop: Shop, signed: bool):
    """A delivery to the Stripe webhook: a realistic event with fields replaced, signed or not."""
    purchase_id = draw(st.one_of(st.sampled_from(shop.purchase_ids), st.none()))
    event = build_event(
        draw(st.sampled_from(SUPPORTED_TYPES + ("customer.created",))),
        PurchaseFacts(
            purchase_id=purchase_id, payment_intent_id=draw(st.sampled_from(["pi_fuzz_1", "pi_fuzz_2", None]))
        ),
    )
    obj = event["data"]["object"]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["event", "object", "metadata"]))
        target = {"event": event, "object": obj, "metadata": obj.setdefault("metadata", {})}[where]
        if isinstance(target, dict):
            key = draw(
                st.one_of(
                    st.sampled_from(["id", "payment_intent", "charge", "customer"]),
                    st.sampled_from(
                        ["id", "type", "payment_intent", "amount_refunded", "purchase_id", "client_reference_id"]
                        + ["payment_status", "last_payment_error", "data", "object", "metadata", "created"]
                    ),
                    TEXT,
                )
            )
            target[key] = draw(HOSTILE)
    body = (
        _json_bytes(event) if draw(st.integers(0, 9)) else draw(st.one_of(DEEP.map(str.encode), st.binary(max_size=60)))
    )
    if signed:
        header = signing.header(body, SECRET)
    else:
        header = draw(st.one_of(st.none(), TEXT.map(_header_text)))
        header = signing.header(body, "whsec_not_ours") if header == "" else header
    headers = {} if header is None else {"Stripe-Signature": header}
    return "POST", "/webhooks/stripe", {"data": body, "headers": headers, "content_type": "application/json"}


def any_request(shop: Shop):
    """(surface, request) from every surface."""
    return st.one_of(
        webhook_request(shop, signed=True).map(lambda r: ("webhook_signed", r)),
        webhook_request(shop, signed=False).map(lambda r: ("webhook_unsigned", r)),
        storefront_request(shop).map(lambda r: ("storefront", r)),
        admin_api_request(shop).map(lambda r: ("admin_api", r)),
        admin_form_request(shop).map(lambda r: ("admin_forms", r)),
    )


# --- the run ---------------------------------------------------------------------------------


# What a refused request must leave alone: row counts, balances and the last change of each table
# a request can write (one statement, compiled once).
STATE = text(
    "SELECT "
    + ", ".join(
        [
            "(SELECT count(*) FROM customers)",
            "(SELECT coalesce(sum(credit_balance_cents), 0) FROM customers)",
            "(SELECT count(*) FROM purchases)",
            "(SELECT max(updated_at) FROM purchases)",
            "(SELECT count(*) FROM stripe_events)",
            "(SELECT count(*) FROM operations)",
            "(SELECT max(updated_at) FROM operations)",
            "(SELECT count(*) FROM bulk_jobs)",
            "(SELECT count(*) FROM operation_pauses)",
        ]
    )
)


def row_counts() -> tuple:
    """The state every refused request must leave as it was."""
    return tuple(db.session.execute(STATE).one())


def _seed(app, httpserver) -> Shop:
    """Products, customers with credits, purchases, dead operations, tokens and an admin."""
    shop = Shop()
    with app.app_context():
        admins.create_admin(ADMIN_EMAIL, PASSWORD)
        shop.admin_token = tokens.create_token("fuzz-ops", "admin").raw
        shop.storefront_token = tokens.create_token("fuzz-shop", "storefront").raw
        products = [
            Product(sku=sku, name=sku, kind=kind, price_cents=price, currency="usd", credit_cents_granted=credits)
            for sku, kind, price, credits in (("lead-a", "lead", 500, 0), ("pack-b", "credits", 900, 1000))
        ]
        db.session.add_all(products)
        db.session.flush()
        shop.skus = [product.sku for product in products]
        for n in range(3):
            customer = Customer(email=f"c{n}@example.com", name=f"C {n}", credit_balance_cents=10**6)
            db.session.add(customer)
            db.session.flush()
            shop.customer_ids.append(customer.id)
            purchase = Purchase(
                customer_id=customer.id,
                product_id=products[0].id,
                payment_method="card",
                status="pending",
                amount_cents=500,
                currency="usd",
                stripe_payment_intent_id=f"pi_fuzz_{n}",
            )
            db.session.add(purchase)
            db.session.flush()
            shop.purchase_ids.append(purchase.id)
        db.session.commit()
        for state in ("dead", "dead", "retrying", "scheduled", "succeeded"):
            shop.operation_ids.append(make_op(state=state).id)
        shop.names = ["email.welcome", "stripe.charge.refunded", "admin.bulk_retry"]
        db.session.remove()
    httpserver.expect_request("/v1/checkout/sessions", method="POST").respond_with_json(
        {"id": "cs_fuzz", "object": "checkout.session", "url": "https://checkout.stripe.com/c/pay/cs_fuzz"}
    )
    return shop


@pytest.fixture
def fuzz_app(backend, httpserver):
    """The app on both backends, with no app context left open (each request makes its own)."""
    app = make_app(
        backend,
        STRIPE_WEBHOOK_SECRET=SECRET,
        STRIPE_SECRET_KEY="sk_test_fuzz",
        STRIPE_MAX_NETWORK_RETRIES=0,
        STRIPE_TIMEOUT_SECONDS=2.0,
        STRIPE_API_BASE=httpserver.url_for("/").rstrip("/"),
    )
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


class Fuzzer:
    """Sends generated requests and keeps the figures: requests per surface, answers per class, problems."""

    def __init__(self, app, client, csrf: str, keep_going: bool):
        self.app, self.client, self.csrf, self.keep_going = app, client, csrf, keep_going
        self.sent, self.statuses, self.problems = Counter(), Counter(), Counter()
        self.first_failure: list[str] = []
        self.state = None

    def remember_state(self) -> None:
        """Note the database state a refused request must leave alone."""
        with self.app.app_context():
            self.state = row_counts()

    def send(self, surface: str, method: str, path: str, kwargs: dict) -> None:
        """One request; a 5xx (or an exception the app let through) or a write on a 4xx is a problem."""
        headers = {k: v.replace("{csrf}", self.csrf) for k, v in kwargs.get("headers", {}).items()}
        options = {k: v for k, v in kwargs.items() if k != "headers"}
        self.sent[surface] += 1
        route = f"{surface} {method} {'/'.join(path.split('?')[0].split('/')[:4])}"
        try:
            response = self.client.open(path, method=method, headers=headers, **options)
        except Exception as exc:  # TESTING propagates what would be a 500 in production
            self._problem(f"{route} raised {type(exc).__name__}", f"{exc!r} on {method} {path} {kwargs}")
            return
        self.statuses[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            self._problem(f"{route} {response.status_code}", f"{method} {path} {kwargs}: {response.text[:300]}")
        with self.app.app_context():
            now = row_counts()
            if 400 <= response.status_code < 500 and now != self.state:
                self._problem(f"{route} {response.status_code} wrote rows", f"{method} {path} {kwargs}")
            if surface == "webhook_signed" and response.status_code == 200:
                for wrong in _process_stored_events():
                    self._problem(f"{route} processing {wrong.split(' ')[1]}", wrong)
                now = row_counts()
        self.state = now

    def _problem(self, key: str, detail: str) -> None:
        self.problems[key] += 1
        if not self.first_failure:
            self.first_failure.append(f"{key}: {detail}"[:3000])
        if not self.keep_going:
            raise AssertionError(self.first_failure[0])

    def summary(self) -> str:
        """The figures docs/reliability.md quotes."""
        backend = self.app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0].split("+")[0]
        return f"fuzz {backend}: sent {dict(self.sent)}, answers {dict(self.statuses)}, problems {dict(self.problems)}"


def test_no_generated_request_gets_a_5xx_or_writes_on_a_4xx(fuzz_app, httpserver):
    shop = _seed(fuzz_app, httpserver)
    client = fuzz_app.test_client()
    assert login(client, email=ADMIN_EMAIL).status_code == 302
    csrf = csrf_from(client.get("/admin/failed-operations").text)
    fuzzer = Fuzzer(fuzz_app, client, csrf, keep_going=KEEP_GOING)

    # Ten requests per example: Hypothesis's own work per example then costs a tenth as much. No
    # shrinking: the requests change the database, so a replay is not the same run, and the
    # failing request is named in the message anyway.
    @settings(
        max_examples=-(-EXAMPLES // BATCH),
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(any_request(shop), min_size=BATCH, max_size=BATCH))
    def some_requests(batch):
        fuzzer.remember_state()
        for surface, request in batch:
            fuzzer.send(surface, *request)

    started = time.monotonic()
    try:
        some_requests()
    except BaseException:
        # Hypothesis replays a failing example on a database the first run already changed:
        # the first failure is the one to report.
        if fuzzer.first_failure:
            pytest.fail(fuzzer.first_failure[0])
        raise
    print(f"{fuzzer.summary()} in {time.monotonic() - started:.1f} s")
    assert not fuzzer.problems, fuzzer.summary() + "\nfirst: " + fuzzer.first_failure[0]
    assert sum(fuzzer.sent.values()) >= EXAMPLES
    assert all(fuzzer.sent[surface] for surface in SURFACES), fuzzer.sent
    with fuzz_app.app_context():
        _assert_nothing_half_written()


def _process_stored_events() -> list[str]:
    """Run stored events' processing now; a handler may defer or dead-letter bad input, never retry
    it (a transient failure on input is a bug that costs six attempts). Returns what went wrong."""
    due = db.session.execute(select(Operation.id).where(Operation.kind == "webhook", Operation.state == "pending"))
    ids = list(due.scalars())
    db.session.rollback()
    wrong = []
    for operation_id in ids:
        # not_claimed: its name is paused (the fuzz pauses names too) or it is not due yet.
        outcome = runner.execute(operation_id).outcome
        operation = db.session.get(Operation, operation_id)
        if outcome not in ("succeeded", "deferred", "dead", "not_claimed") or (
            outcome == "dead" and operation.error_kind != "permanent"
        ):
            wrong.append(f"{operation.name} {outcome} ({operation.error_kind}): {operation.error_message}")
        db.session.rollback()
    return wrong


def _assert_nothing_half_written() -> None:
    """What each write commits together is all there: customers with their welcome email, events with their work."""
    welcomes = set(
        db.session.execute(select(Operation.subject).where(Operation.name == "email.welcome")).scalars().all()
    )
    for customer_id in db.session.execute(select(Customer.id)).scalars():
        if customer_id > 3:  # seeded customers were inserted directly
            assert f"customer:{customer_id}" in welcomes
    for event in db.session.execute(select(StripeEvent)).scalars():
        assert event.operation_id is not None or event.processing_state == "ignored", event.id
        assert event.processing_state != "received" or event.operation_id is not None, event.id
    for job in db.session.execute(select(BulkJob)).scalars():
        assert job.total >= 0 and job.processed <= job.total
    db.session.rollback()
