"""Demo data fills only an empty database; CSRF stays on in tests; front-end packages come from the lock file."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.conftest import make_app
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Operation
from webapp.services.console.failures import dead_letter_stats
from webapp.services.console.filters import Filters
from webapp.services.console.issues import group_failures

# --- demo data ----------------------------------------------------------------------------


def test_demo_data_fills_an_empty_database_only(sqlite_app):
    cli = sqlite_app.test_cli_runner()
    result = cli.invoke(args=["demo-data"])
    assert result.exit_code == 0, result.output
    kinds = set(db.session.execute(select(Operation.kind).where(Operation.state == "dead")).scalars())
    states = set(db.session.execute(select(Operation.state)).scalars())
    db.session.rollback()
    assert {"email", "webhook"} <= kinds and {"succeeded", "dead", "scheduled"} <= states
    assert dead_letter_stats()["total"] > 5
    assert len(group_failures(Filters(status="all")).issues) >= 4
    assert (
        db.session.execute(
            select(func.count())
            .select_from(Operation)
            .where(Operation.state == "dead", Operation.error_fingerprint.is_(None))
        ).scalar_one()
        == 0
    )
    again = cli.invoke(args=["demo-data"])
    assert again.exit_code != 0 and "EMPTY" in again.output.upper()


def test_make_app_keeps_csrf_enabled(sqlite_backend):
    app = make_app(sqlite_backend)
    assert app.config["WTF_CSRF_ENABLED"] is True and app.config["WTF_CSRF_TIME_LIMIT"] is None


def test_front_end_packages_install_from_the_lock_file(tmp_path, monkeypatch):
    import shutil

    from webapp import frontend

    static = tmp_path / "static"
    static.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(frontend.STATIC / name, static / name)
    assert frontend.ensure_installed(static) is True
    assert (static / "node_modules" / "htmx.org" / "dist" / "htmx.min.js").exists()
    assert (static / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js").exists()
    assert frontend.ensure_installed(static) is False  # present: nothing to do
    shutil.rmtree(static / "node_modules")
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm anywhere
    with pytest.raises(frontend.FrontEndError, match="npm is needed"):
        frontend.ensure_installed(static)


def test_a_demo_credit_pack_buys_a_demo_lead(sqlite_app):
    """Issue 12 #15: the "$100 credit pack" adds 10000 cents, so its buyer can then buy a $39 lead."""
    from webapp.devdata import demo
    from webapp.models.payments import Customer, Product, Purchase
    from webapp.services.payments import purchases

    demo.fill()
    packs = {p.sku: p for p in db.session.execute(select(Product).where(Product.kind == "credits")).scalars()}
    assert {sku: (p.name, p.credit_cents_granted) for sku, p in packs.items()} == {
        "credits-100": ("$100 credit pack", 10000),
        "credits-500": ("$500 credit pack", 50000),
    }
    buyer = Customer(email="pack.buyer@example.com", name="Pack Buyer", credit_balance_cents=0)
    db.session.add(buyer)
    db.session.flush()
    bought = Purchase(
        customer_id=buyer.id,
        product_id=packs["credits-100"].id,
        payment_method="card",
        status="pending",
        amount_cents=packs["credits-100"].price_cents,
        currency="usd",
    )
    db.session.add(bought)
    db.session.commit()
    assert purchases.complete(bought.id, now=utcnow()).outcome == "completed"
    db.session.commit()
    lead = db.session.execute(select(Product).where(Product.sku == "lead-roof-tx")).scalar_one()
    request = purchases.PurchaseRequest(
        customer=db.session.get(Customer, buyer.id), product=lead, payment_method="credits"
    )
    paid = purchases.buy_with_credits(request)
    assert (
        paid.status == "completed"
        and db.session.get(Customer, buyer.id, populate_existing=True).credit_balance_cents == 6100
    )
