"""Send rate limits per recipient and overall, shared by every worker through the database.

Each scope (one recipient, or ``global``) owns N slots, N being its limit per minute. Sending
takes a slot whose last use is at least a minute old with a conditional UPDATE
(``... WHERE used_at <= now - 1 minute``), so two workers can never take the same slot and no
scope ever sends more than N emails in any sliding minute. When every slot is busy, the email
is deferred to the moment the oldest slot frees up: no attempt is consumed and nothing is lost.

The recipient's slot and the global slot are taken in one transaction (recipient first, then
global, always in that order, so concurrent reservations cannot deadlock); if the global limit
is reached, the rollback returns the recipient's slot.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.models import EmailRateSlot
from webapp.services.email.sql import insert_ignore

WINDOW = timedelta(minutes=1)
GLOBAL = "global"
# A never-used slot: far enough in the past to be free under any window.
NEVER = datetime(2000, 1, 1)
# Lost races per scope before giving up for a moment (each lost race means another send went out).
MAX_RACES = 8
PRUNE_PROBABILITY = 0.01
PRUNE_AFTER = timedelta(hours=1)


def recipient_scope(address: str) -> str:
    """The scope of one recipient: a hash, so the slots table holds no addresses."""
    digest = hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()[:40]
    return f"to:{digest}"


def reserve(address: str, *, now: datetime, per_recipient: int, global_limit: int) -> None:
    """Take a send slot for ``address`` and a global one, or raise Deferral(until=next free slot).

    A limit of 0 or less means unlimited. Commits (or rolls back) its own transaction.
    """
    scopes = [(recipient_scope(address), per_recipient, "per-recipient"), (GLOBAL, global_limit, "global")]
    try:
        for scope, limit, label in scopes:
            if limit <= 0:
                continue
            free_at = _take_slot(scope, limit, now)
            if free_at is not None:
                db.session.rollback()  # give back any slot taken for an earlier scope
                raise Deferral(free_at, f"{label} email rate limit of {limit}/min reached")
        db.session.commit()
    except Deferral:
        raise
    except Exception:
        db.session.rollback()
        raise
    if random.random() < PRUNE_PROBABILITY:
        prune(now)


def _take_slot(scope: str, limit: int, now: datetime) -> datetime | None:
    """Take one of ``scope``'s slots; None on success, else when the next slot frees up."""
    cutoff = now - WINDOW
    for _ in range(MAX_RACES):
        rows = db.session.execute(
            select(EmailRateSlot.slot, EmailRateSlot.used_at)
            .where(EmailRateSlot.scope == scope, EmailRateSlot.slot < limit)
            .order_by(EmailRateSlot.used_at, EmailRateSlot.slot)
        ).all()
        if len(rows) < limit:
            # Slots are created lazily (and re-created after pruning); existing ones are kept.
            insert_ignore(EmailRateSlot, [{"scope": scope, "slot": n, "used_at": NEVER} for n in range(limit)])
            continue
        slot, used_at = rows[0]
        if used_at > cutoff:
            return used_at + WINDOW
        taken = db.session.execute(
            update(EmailRateSlot)
            .where(EmailRateSlot.scope == scope, EmailRateSlot.slot == slot, EmailRateSlot.used_at <= cutoff)
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            return None
    # Every race lost: other workers are sending right now; look again in a moment.
    return now + timedelta(seconds=1)


def prune(now: datetime) -> int:
    """Delete recipients' slots unused for an hour (a missing slot is simply a free one). Commits."""
    try:
        removed = db.session.execute(
            delete(EmailRateSlot)
            .where(EmailRateSlot.scope != GLOBAL, EmailRateSlot.used_at < now - PRUNE_AFTER)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        return removed
    except Exception:  # best effort housekeeping; a lock conflict just means "next time"
        db.session.rollback()
        return 0


def sends_in_window(address: str | None, now: datetime) -> int:
    """How many slots of a recipient (or the global scope) were used in the last minute."""
    scope = recipient_scope(address) if address else GLOBAL
    count = db.session.execute(
        select(EmailRateSlot.slot).where(EmailRateSlot.scope == scope, EmailRateSlot.used_at > now - WINDOW)
    ).all()
    db.session.rollback()
    return len(count)
