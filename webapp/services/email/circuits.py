"""Circuit breakers per email provider, shared by every worker process through the database.

A provider's circuit is *closed* while it works. After ``EMAIL_CIRCUIT_THRESHOLD`` consecutive
failures it *opens* for ``EMAIL_CIRCUIT_COOLDOWN_SECONDS`` and is skipped. Once the cool-down
has passed it is *half-open*: exactly one worker wins a conditional UPDATE that lets it send a
probe (and re-arms the cool-down for everyone else); a success closes the circuit, a failure
opens it for another cool-down. Every function here runs and commits its own short transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import case, select, update

from webapp.domain.time import utcnow
from webapp.extensions import db
from webapp.models import EmailProviderCircuit
from webapp.services.email.sql import insert_ignore

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_ERROR = 1000


def state_of(opened_until: datetime | None, now: datetime) -> str:
    """closed / open / half_open for a circuit whose cool-down ends at ``opened_until``."""
    if opened_until is None:
        return CLOSED
    return OPEN if now < opened_until else HALF_OPEN


def circuit_states(now: datetime | None = None) -> list[dict]:
    """Every configured provider's circuit (plus any with a stored state), for health pages and metrics."""
    now = now or utcnow()
    configured = list(current_app.config["EMAIL_PROVIDERS"])
    rows = {row.provider: row for row in db.session.execute(select(EmailProviderCircuit)).scalars()}
    db.session.rollback()  # a read only; never hold a (SQLite: write-locking) transaction open
    names = configured + sorted(name for name in rows if name not in configured)
    states = []
    for name in names:
        row = rows.get(name)
        opened_until = row.opened_until if row else None
        states.append(
            {
                "provider": name,
                "state": state_of(opened_until, now),
                "consecutive_failures": row.consecutive_failures if row else 0,
                "opened_until": opened_until,
                "last_error": row.last_error if row else None,
            }
        )
    return states


def blocked_until(names: list[str], now: datetime) -> dict[str, datetime]:
    """Providers among ``names`` whose circuit is open now, with when each becomes half-open."""
    rows = db.session.execute(
        select(EmailProviderCircuit.provider, EmailProviderCircuit.opened_until).where(
            EmailProviderCircuit.provider.in_(names), EmailProviderCircuit.opened_until > now
        )
    ).all()
    db.session.rollback()
    return {provider: opened_until for provider, opened_until in rows}


def acquire(provider: str, now: datetime, config) -> bool:
    """May this worker use ``provider`` now? Closed: yes. Open: no. Half-open: only the probe winner."""
    cooldown = timedelta(seconds=config["EMAIL_CIRCUIT_COOLDOWN_SECONDS"])
    opened_until = db.session.execute(
        select(EmailProviderCircuit.opened_until).where(EmailProviderCircuit.provider == provider)
    ).scalar_one_or_none()
    state = state_of(opened_until, now)
    if state != HALF_OPEN:
        db.session.rollback()
        return state == CLOSED
    # Re-arm the cool-down only if nobody else did since we read it: one probe at a time.
    won = (
        db.session.execute(
            update(EmailProviderCircuit)
            .where(EmailProviderCircuit.provider == provider, EmailProviderCircuit.opened_until == opened_until)
            .values(opened_until=now + cooldown, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    db.session.commit()
    return won


def record_success(provider: str, now: datetime) -> None:
    """The provider answered properly: close its circuit and reset the failure count."""
    db.session.execute(
        update(EmailProviderCircuit)
        .where(
            EmailProviderCircuit.provider == provider,
            (EmailProviderCircuit.consecutive_failures != 0) | EmailProviderCircuit.opened_until.is_not(None),
        )
        .values(consecutive_failures=0, opened_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def record_failure(provider: str, now: datetime, error: str, config) -> None:
    """Count a failure; the one that reaches the threshold (or fails a probe) opens the circuit."""
    threshold, cooldown = config["EMAIL_CIRCUIT_THRESHOLD"], timedelta(seconds=config["EMAIL_CIRCUIT_COOLDOWN_SECONDS"])
    insert_ignore(
        EmailProviderCircuit,
        [{"provider": provider, "consecutive_failures": 0, "opened_until": None, "updated_at": now}],
    )
    failures = EmailProviderCircuit.consecutive_failures + 1
    # One atomic UPDATE: concurrent workers' failures all count, none is lost.
    db.session.execute(
        update(EmailProviderCircuit)
        .where(EmailProviderCircuit.provider == provider)
        .values(
            consecutive_failures=failures,
            opened_until=case((failures >= threshold, now + cooldown), else_=EmailProviderCircuit.opened_until),
            last_error=error[:MAX_ERROR],
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
