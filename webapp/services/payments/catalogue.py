"""The product catalogue: lead listings and credit packs, managed from the CLI."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Product
from webapp.models.payments import PRODUCT_KINDS
from webapp.services.payments.errors import Conflict, NotFound, ValidationFailed

SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
CURRENCY_PATTERN = re.compile(r"^[a-z]{3}$")


def add_product(
    sku: str,
    name: str,
    kind: str,
    price_cents: int,
    *,
    currency: str = "usd",
    credit_cents_granted: int = 0,
    now: datetime | None = None,
) -> Product:
    """Add a product and commit; a credit pack must grant credit (in cents), a lead listing none."""
    currency = (currency or "").strip().lower()
    fields = _check(sku, name, kind, price_cents, currency, credit_cents_granted)
    if fields:
        raise ValidationFailed(fields)
    product = Product(
        sku=sku,
        name=name.strip(),
        kind=kind,
        price_cents=price_cents,
        currency=currency,
        credit_cents_granted=credit_cents_granted if kind == "credits" else 0,
        active=True,
        created_at=now or utcnow(),
    )
    db.session.add(product)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"a product with sku {sku!r} already exists", code="product_exists") from None
    return product


def _check(sku, name, kind, price_cents, currency, credit_cents_granted) -> dict[str, str]:
    fields = {}
    if not isinstance(sku, str) or not SKU_PATTERN.match(sku):
        fields["sku"] = "must be 1-80 letters, digits, '.', '_' or '-'"
    if not isinstance(name, str) or not name.strip():
        fields["name"] = "is required"
    if kind not in PRODUCT_KINDS:
        fields["kind"] = f"must be one of {', '.join(PRODUCT_KINDS)}"
    if not isinstance(price_cents, int) or price_cents < 1:
        fields["price_cents"] = "must be a positive whole number of cents"
    if not CURRENCY_PATTERN.match(currency):
        fields["currency"] = "must be a three-letter ISO currency code"
    if kind == "credits" and (not isinstance(credit_cents_granted, int) or credit_cents_granted < 1):
        fields["credit_cents_granted"] = "a credit pack must grant a positive number of cents of credit"
    return fields


def list_products(include_inactive: bool = True) -> list[Product]:
    """Products by sku; inactive ones too unless told otherwise."""
    query = select(Product).order_by(Product.sku)
    if not include_inactive:
        query = query.where(Product.active.is_(True))
    products = list(db.session.execute(query).scalars())
    for product in products:
        db.session.expunge(product)
    db.session.rollback()
    return products


def deactivate_product(sku: str) -> Product:
    """Stop selling a product (existing purchases keep pointing at it); commits."""
    product = find_product(sku)
    if product is None:
        db.session.rollback()
        raise NotFound(f"no product with sku {sku!r}")
    product.active = False
    db.session.commit()
    return product


def find_product(sku: str) -> Product | None:
    """The product with this sku (active or not), or None."""
    return db.session.execute(select(Product).where(Product.sku == sku)).scalar_one_or_none()
