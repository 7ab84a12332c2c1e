"""Each storefront sees only its own customers and purchases: another token's ids answer 404."""

from __future__ import annotations

from sqlalchemy import update

from tests.support import shop
from webapp.extensions import db
from webapp.models import Customer
from webapp.services.access import tokens


def _auth(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


def test_a_storefront_token_sees_only_its_own_customers_and_purchases(sqlite_app):
    client = sqlite_app.test_client()
    ours, theirs = tokens.create_token("shop", "storefront").raw, tokens.create_token("other-shop", "storefront").raw
    rotated = tokens.create_token("shop", "storefront").raw  # a new token for the same storefront
    shop.add_product(sku="lead-1", price=500)

    customer = client.post("/api/customers", json={"email": "ada@example.com", "name": "Ada"}, headers=_auth(ours))
    assert customer.status_code == 201
    customer_id = customer.get_json()["id"]
    db.session.execute(update(Customer).where(Customer.id == customer_id).values(credit_balance_cents=5000))
    db.session.commit()
    order = {"customer_id": customer_id, "product_sku": "lead-1", "payment_method": "credits"}
    bought = client.post("/api/purchases", json=order, headers=_auth(ours))
    assert bought.status_code == 201, bought.text
    purchase_id = bought.get_json()["id"]

    assert client.get(f"/api/purchases/{purchase_id}", headers=_auth(ours)).status_code == 200
    assert client.get(f"/api/purchases/{purchase_id}", headers=_auth(rotated)).status_code == 200
    # Another storefront: the purchase does not exist for it, and it cannot buy for our customer.
    foreign = client.get(f"/api/purchases/{purchase_id}", headers=_auth(theirs))
    assert foreign.status_code == 404 and foreign.get_json()["error"] == "not_found"
    missing = client.get("/api/purchases/999999", headers=_auth(theirs))
    assert foreign.get_json()["message"] == missing.get_json()["message"].replace("999999", str(purchase_id))
    refused = client.post("/api/purchases", json=order, headers=_auth(theirs))
    assert refused.status_code == 422 and "customer_id" in refused.get_json()["fields"]
    assert shop.customer(customer_id).credit_balance_cents == 5000 - 500  # only our one purchase was paid
