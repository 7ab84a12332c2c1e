"""A purchase's fulfilment follows its confirmation email (seed 002's "user never told" gap).

An engine outcome listener, run inside the transaction that records the email operation's
outcome: succeeded → ``sent`` (+ ``fulfilled_at``), retrying → ``failing``, dead →
``undeliverable``. Deferrals change nothing (rate limits are not failures). The UPDATE is
conditional: a purchase whose confirmation was sent is never downgraded (a stray duplicate
operation failing later cannot make a delivered purchase look undelivered).
"""

from __future__ import annotations

from sqlalchemy import or_, update

from webapp.extensions import db
from webapp.models.payments import Purchase
from webapp.services.email.outbox import FULFILMENT_TEMPLATES
from webapp.services.engine.runner import on_outcome

STATUS_FOR_OUTCOME = {"succeeded": "sent", "retrying": "failing", "dead": "undeliverable"}


@on_outcome(outcomes=tuple(STATUS_FOR_OUTCOME), kinds=("email",))
def update_fulfilment(operation, outcome: str) -> None:
    """Mirror a purchase-confirmation email's outcome onto its purchase (no I/O; no commit)."""
    status = STATUS_FOR_OUTCOME[outcome]
    payload = operation.payload or {}
    purchase_id = payload.get("purchase_id")
    if purchase_id is None or payload.get("template") not in FULFILMENT_TEMPLATES:
        return
    when = operation.succeeded_at or operation.updated_at
    values = {"fulfilment_status": status, "updated_at": when}
    if status == "sent":
        values["fulfilled_at"] = when
    db.session.execute(
        update(Purchase)
        .where(
            Purchase.id == int(purchase_id),
            or_(Purchase.fulfilment_status.is_(None), Purchase.fulfilment_status != "sent"),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
