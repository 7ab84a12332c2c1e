"""Send rate limits per recipient and overall, shared by every worker through the database.

Each scope (one recipient, or ``global``) is one row holding GCRA's *theoretical arrival time*
(TAT). A limit of N per minute gives an emission interval ``T = 1 minute / N`` (rounded up to
the microsecond, so never faster than N per minute) and lets a send through while the TAT is at
most ``(N - 1) * T`` ahead of now; each send pushes the TAT one interval on. So an idle scope
can send N at once, then one more every T: never more than N in a burst, never more than N per
minute on average, and a send costs one UPDATE of one row whatever N is.

Taking a send is one conditional UPDATE (``... WHERE tat_us <= :now + (N - 1) * T``): the database
evaluates the condition and the new TAT on the row it locks, so concurrent workers in any number
of processes can never take more than the limit (no read-modify-write). When the scope is full,
the email is deferred to the moment its next send is allowed (``TAT - (N - 1) * T``): no attempt
is consumed and nothing is lost.

The recipient's scope and the global one are taken in one transaction (recipient first, then
global, always in that order, so concurrent reservations cannot deadlock); if the global limit
is reached, the rollback gives the recipient's send back.

A scope whose TAT is in the past allows exactly what a scope without a row allows, so the
periodic cleanup deletes recipients' rows idle for an hour (``forget_idle``): the table holds
the recipients of the last hour or so, not every recipient ever.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, String, bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from webapp.domain.errors import Deferral
from webapp.extensions import db
from webapp.models import EmailRateLimit

WINDOW_US = 60_000_000  # the limits are per minute
GLOBAL = "global"
# A second round follows only a concurrent first send of the same scope, so two always suffice.
ROUNDS = 2
IDLE_US = 3_600_000_000  # a recipient's row idle this long is forgotten by cleanup (an hour)
EPOCH = datetime(1970, 1, 1)  # stored times are Unix microseconds, readable by anyone querying the table

_table = EmailRateLimit.__table__
_tat = _table.c.tat_us
# Built once: the statement is compiled once per dialect and cached, so a send builds nothing.
_TAKE = (
    update(_table)
    .where(
        _table.c.scope == bindparam("key", type_=String),
        _tat <= bindparam("latest", type_=BigInteger),
    )
    .values(
        tat_us=case(
            (_tat > bindparam("now", type_=BigInteger), _tat + bindparam("interval", type_=BigInteger)),
            else_=bindparam("idle_tat", type_=BigInteger),
        )
    )
)
_READ = select(_tat).where(_table.c.scope == bindparam("key", type_=String))
# RETURNING says whether this send created the row (an INSERT's rowcount is not reliable on psycopg).
_CREATE = {
    name: dialect.insert(_table)
    .values(scope=bindparam("key"), tat_us=bindparam("first_tat"))
    .on_conflict_do_nothing()
    .returning(_table.c.scope)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def recipient_scope(address: str) -> str:
    """The scope of one recipient: a hash, so the rate-limit table holds no addresses."""
    digest = hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()[:40]
    return f"to:{digest}"


def interval_us(limit: int) -> int:
    """GCRA's emission interval for ``limit`` sends per minute, in whole microseconds (rounded up)."""
    return -(-WINDOW_US // limit)


def to_micros(moment: datetime) -> int:
    """A naive UTC datetime as microseconds since the Unix epoch."""
    delta = moment - EPOCH
    # Integer arithmetic only: exact at any date (a float division would be exact only until 2255).
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Microseconds since the Unix epoch as a naive UTC datetime."""
    return EPOCH + timedelta(microseconds=micros)


def reserve(address: str, *, now: datetime, per_recipient: int, global_limit: int) -> None:
    """Take a send for ``address`` and a global one, or raise Deferral(until=next allowed send).

    A limit of 0 or less means unlimited. Commits (or rolls back) its own transaction.
    """
    scopes = [(recipient_scope(address), per_recipient, "per-recipient"), (GLOBAL, global_limit, "global")]
    try:
        for scope, limit, label in scopes:
            if limit <= 0:
                continue
            free_at = _take(scope, limit, to_micros(now))
            if free_at is not None:
                raise Deferral(free_at, f"{label} email rate limit of {limit}/min reached")
        db.session.commit()
    except Exception:
        db.session.rollback()  # a deferral gives back the send taken for an earlier scope; an error, any
        raise


def _take(scope: str, limit: int, now: int) -> datetime | None:
    """Take one send of ``scope``: None on success, else when its next send is allowed."""
    interval = interval_us(limit)
    tolerance = (limit - 1) * interval
    params = {"key": scope, "now": now, "interval": interval, "latest": now + tolerance, "idle_tat": now + interval}
    for _ in range(ROUNDS):
        if db.session.execute(_TAKE, params).rowcount == 1:
            return None
        tat = db.session.execute(_READ, {"key": scope}).scalar()
        if tat is None:
            # First send of a new scope: create its row as it stands after this send. A concurrent
            # first send may win the insert; then the row exists and the conditional UPDATE decides.
            if _create(scope, now + interval):
                return None
        elif tat > params["latest"]:
            return from_micros(tat - tolerance)
        # Otherwise the row was committed by a concurrent first send after the UPDATE's snapshot
        # (PostgreSQL's READ COMMITTED): the UPDATE sees it now.
    # Still racing (rows created and forgotten meanwhile): not a failure, look again one interval on.
    return from_micros(now + interval)


def _create(scope: str, first_tat: int) -> bool:
    """Insert ``scope``'s row unless it exists; whether this call created it."""
    statement = _CREATE[db.session.get_bind().dialect.name]
    return db.session.execute(statement, {"key": scope, "first_tat": first_tat}).first() is not None


def forget_idle(now: datetime, size: int) -> int:
    """Delete up to ``size`` recipients' rows idle for an hour (never the global one); commits; how many."""
    cutoff = to_micros(now) - IDLE_US
    idle = [_table.c.scope != GLOBAL, _tat < cutoff]
    some = select(_table.c.scope).where(*idle).limit(size)
    # The condition is repeated on the rows deleted: a send that took a row since the sub-select
    # read it keeps it (PostgreSQL re-checks the outer WHERE on the row it locks).
    removed = db.session.execute(delete(_table).where(_table.c.scope.in_(some), *idle)).rowcount
    db.session.commit()
    return removed


def sends_in_use(address: str | None, now: datetime, limit: int) -> int:
    """How many of a recipient's (or the global scope's, for None) ``limit`` sends are in use now."""
    scope = recipient_scope(address) if address else GLOBAL
    tat = db.session.execute(_READ, {"key": scope}).scalar()
    db.session.rollback()
    ahead = max(0, (tat or 0) - to_micros(now))
    return min(limit, -(-ahead // interval_us(limit)))
