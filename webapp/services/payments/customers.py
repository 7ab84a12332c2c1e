"""Customers: created through the storefront API, each welcomed by email (seed 001)."""

from __future__ import annotations

from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from webapp.domain.text import text_problem
from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import Customer
from webapp.services.email import queue_email
from webapp.services.payments.errors import Conflict, ValidationFailed

MAX_NAME = 200


def normalise_email(value) -> str:
    """A syntactically valid, normalised address, or ValidationFailed for field ``email``."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed({"email": "is required"})
    if len(value) > 254:
        raise ValidationFailed({"email": "is longer than 254 characters"})
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationFailed({"email": f"is not a valid address: {exc}"}) from None


def check_customer_input(data: dict) -> tuple[str, str]:
    """Validate ``{"email", "name"}``; every bad field is reported at once."""
    fields: dict[str, str] = {}
    email = name = None
    try:
        email = normalise_email(data.get("email"))
    except ValidationFailed as exc:
        fields.update(exc.fields)
    raw_name = data.get("name")
    if not isinstance(raw_name, str) or not raw_name.strip():
        fields["name"] = "is required"
    elif len(raw_name.strip()) > MAX_NAME:
        fields["name"] = f"is longer than {MAX_NAME} characters"
    elif problem := text_problem(raw_name):
        fields["name"] = problem
    else:
        name = raw_name.strip()
    if fields:
        raise ValidationFailed(fields)
    return email, name


def create_customer(data: dict, *, now: datetime | None = None, storefront: str | None = None) -> Customer:
    """Create a customer of ``storefront`` and, in the same transaction, their welcome email; commits.

    A second customer with the same address (case-insensitively) is a Conflict.
    """
    now = now or utcnow()
    email, name = check_customer_input(data)
    if _email_taken(email):
        raise Conflict(f"a customer with email {email} already exists", code="customer_exists")
    customer = Customer(email=email, name=name, credit_balance_cents=0, created_at=now, storefront=storefront)
    try:
        db.session.add(customer)
        db.session.flush()
        queue_email(
            "welcome",
            email,
            {"customer_name": name, "customer_email": email, "customer_id": customer.id},
            idempotency_key=f"customer:{customer.id}:welcome",
            subject=f"customer:{customer.id}",
        )
        db.session.commit()
    except IntegrityError:
        # A concurrent request created the same address first.
        db.session.rollback()
        raise Conflict(f"a customer with email {email} already exists", code="customer_exists") from None
    return customer


def _email_taken(email: str) -> bool:
    found = db.session.execute(select(Customer.id).where(func.lower(Customer.email) == email.lower()).limit(1)).first()
    return found is not None


def get_customer(customer_id: int) -> Customer | None:
    """The customer with this id, or None (leaves the transaction to the caller)."""
    return db.session.get(Customer, customer_id)
