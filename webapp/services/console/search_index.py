"""The dead-letter text search index: substring search over dead operations without reading them all.

The failed-operations search matches a substring of the subject, idempotency key, error message
or recipient. Over dead letters that was a ``LIKE '%…%'`` on every dead row (~30,000 at a million
operations). Migration 0017 indexes that text for dead rows only, so nothing on the engine's
path writes to it until an operation dies:

- PostgreSQL: a trigram GIN index (``pg_trgm``) on :data:`POSTGRES_TEXT`, partial on
  ``state = 'dead'``. If the extension could not be created the same query runs unindexed.
- SQLite: an FTS5 table with the trigram tokenizer, ``dead_letter_search``, whose rowid is the
  operation's id, kept by triggers on ``operations`` (insert, update, delete of a dead row).

Customers are searched by a substring of their email or name the same way (every customer:
the table is written once per new buyer, not by the engine).

The indexed text joins the four fields with newlines, so a match is re-checked on each field
(:func:`dead_text_matches`): a pattern can never match across two of them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    union_all,
)

from webapp.extensions import db
from webapp.models import Customer, Operation, Purchase

SQLITE_TABLE = "dead_letter_search"
SQLITE_TRIGGERS = ("dead_letter_search_insert", "dead_letter_search_update", "dead_letter_search_delete")
# The text indexed for a dead operation, spelled exactly as the index expression (PostgreSQL) and
# the triggers (SQLite) spell it: the planner matches the expression as written.
POSTGRES_TEXT = (
    "lower(coalesce(operations.subject, '') || E'\\n' || operations.idempotency_key || E'\\n' || "
    "coalesce(operations.error_message, '') || E'\\n' || coalesce(operations.payload ->> 'to', ''))"
)
POSTGRES_INDEX = "ix_operations_dead_search_trgm"
# Customers found by a substring of their email or name (the searches' customer arms): a
# trigram GIN index of each on PostgreSQL, an FTS5 table kept by triggers on SQLite.
POSTGRES_CUSTOMER_INDEXES = {"email": "ix_customers_email_trgm", "name": "ix_customers_name_trgm"}
SQLITE_CUSTOMER_TABLE = "customer_search"
SQLITE_CUSTOMER_TRIGGERS = ("customer_search_insert", "customer_search_update", "customer_search_delete")
# A dead operation's payload ``purchase_id`` as text (the customer arm finds operations by it).
PURCHASE_ID_INDEX = "ix_operations_dead_purchase_id"
# (``{table}``: "operations." in queries; nothing in the index, where SQLite forbids it.)
PURCHASE_ID = {
    "postgresql": "({table}payload ->> 'purchase_id')",
    "sqlite": "CAST(json_extract({table}payload, '$.purchase_id') AS TEXT)",
}


# What migration 0017 builds outside the models (dialect-specific index expressions, an FTS5
# table and its shadow tables): Alembic's comparison with the models leaves them alone.
UNMODELLED_INDEXES = frozenset({POSTGRES_INDEX, PURCHASE_ID_INDEX, *POSTGRES_CUSTOMER_INDEXES.values()})
UNMODELLED_TABLES = (SQLITE_TABLE, SQLITE_CUSTOMER_TABLE)


def modelled(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's ``include_object``: False for the search index's tables and indexes."""
    if type_ == "table" and any(name == table or name.startswith(table + "_") for table in UNMODELLED_TABLES):
        return False
    return not (type_ == "index" and name in UNMODELLED_INDEXES)


def sqlite_text(row: str) -> str:
    """The SQLite expression of the indexed text of ``row`` (``new`` or ``operations``)."""
    return (
        f"lower(coalesce({row}.subject, '') || char(10) || {row}.idempotency_key || char(10) || "
        f"coalesce({row}.error_message, '') || char(10) || coalesce(json_extract({row}.payload, '$.to'), ''))"
    )


def like(column, pattern: str):
    """``column LIKE pattern`` with ``\\`` as the escape character, as both databases index it.

    PostgreSQL escapes with ``\\`` by default; SQLite has no default, and its FTS5 index serves a
    LIKE only without an ESCAPE clause, so one is added only when the pattern needs it.
    """
    if db.session.get_bind().dialect.name == "postgresql" or "\\" not in pattern:
        return column.like(pattern)
    return column.like(pattern, escape="\\")


def probable(condition):
    """``condition`` marked as true for most rows (SQLite's ``likely()``; PostgreSQL has statistics).

    SQLite without ANALYZE takes an equality on an indexed column, ``state = 'dead'``, for the
    most selective term there is, and would walk every dead row's index entry rather than look
    up the search's few candidates by id, subject or purchase. ``likely()`` changes nothing in
    the result, and a partial index on ``state = 'dead'`` still applies.
    """
    return func.likely(condition) if db.session.get_bind().dialect.name == "sqlite" else condition


def dead_purchase_id():
    """A dead operation's payload ``purchase_id`` as text, spelled as its index is."""
    return literal_column(PURCHASE_ID[db.session.get_bind().dialect.name].format(table="operations."))


def dead_text_matches(pattern: str) -> list:
    """The exact per-field test of the search (each field lower-cased against ``pattern``)."""

    def lowered(column):
        return func.lower(column).like(pattern, escape="\\")

    return [
        lowered(Operation.subject),
        lowered(Operation.idempotency_key),
        lowered(Operation.error_message),
        lowered(Operation.payload["to"].as_string()),
    ]


def dead_candidates(pattern: str, dead):
    """A SELECT of the ids the index finds for ``pattern``: every dead operation whose text
    matches, and perhaps a few more (a match across two fields), never fewer."""
    if db.session.get_bind().dialect.name == "postgresql":
        return select(Operation.id).where(dead, like(literal_column(POSTGRES_TEXT), pattern))
    return select(literal_column("rowid")).select_from(table(SQLITE_TABLE)).where(like(literal_column("body"), pattern))


def dead_ids_matching(pattern: str, dead):
    """A SELECT of the ids of dead operations whose subject, key, error or recipient contain the
    lower-cased LIKE ``pattern`` (``%…%``), found through the index and re-checked per field."""
    candidates = Operation.id.in_(dead_candidates(pattern, dead))
    return select(Operation.id).where(probable(dead), candidates, or_(*dead_text_matches(pattern)))


def customer_ids_matching(pattern: str, *, names: bool = False):
    """A SELECT of the ids of customers whose email (or, with ``names``, name) contains the
    lower-cased LIKE ``pattern``, through the customer search index."""
    columns = ("email", "name") if names else ("email",)
    if db.session.get_bind().dialect.name == "postgresql":
        return select(Customer.id).where(or_(*(like(func.lower(getattr(Customer, c)), pattern) for c in columns)))
    found = [
        select(literal_column("rowid"))
        .select_from(table(SQLITE_CUSTOMER_TABLE))
        .where(like(literal_column(c), pattern))
        for c in columns
    ]
    return found[0] if len(found) == 1 else union_all(*found)  # for IN and for counting up to a bound


# The largest BIGINT, as text: a 19-digit key above it would fail PostgreSQL's cast.
MAX_KEY = str(2**63 - 1)


def _key(digits):
    """The text ``digits`` as a primary key to look a row up by (rechecked as text by the caller).

    PostgreSQL's cast fails on anything but a BIGINT's digits, so junk becomes NULL (no row);
    SQLite's never fails (junk becomes 0 or a leading number, which the text recheck rejects).
    """
    if db.session.get_bind().dialect.name == "postgresql":
        # Digits only, and no more than a BIGINT holds (19 digits compare as text, same length);
        # the common short id costs one test.
        key = cast(digits, BigInteger)
        longest = and_(digits.regexp_match(f"^[0-9]{{{len(MAX_KEY)}}}$"), digits <= MAX_KEY)
        return case((digits.regexp_match(f"^[0-9]{{1,{len(MAX_KEY) - 1}}}$"), key), (longest, key))
    return cast(digits, Integer)


def _named_customer(pattern: str, *conditions, through_purchase: bool):
    """Whether the one customer (``through_purchase``: whose purchase) meeting ``conditions``
    has an email containing ``pattern``: a scalar subquery, NULL when there is no such row.

    A boolean subquery, run for each row tested: PostgreSQL turns a correlated EXISTS on a single
    table into a hashed set of every customer, and takes a LIKE on a subquery's email for rare
    (it then sorts every dead letter rather than walk them newest first); a boolean subquery it
    neither hashes nor takes for rare (it estimates one true for half the rows).
    """
    found = select(func.lower(Customer.email).like(pattern, escape="\\")).select_from(Customer)
    if through_purchase:
        found = found.join(Purchase, Purchase.customer_id == Customer.id)
    return found.where(*conditions).scalar_subquery()


def named_customer_matches(pattern: str) -> list:
    """Conditions on ``Operation``: the purchase or customer the row names has an email that
    contains the lower-cased LIKE ``pattern``, each tested by primary-key lookups for this row.

    The same rows as ``purchase_id`` or ``subject`` IN the ids and subjects of every matching
    customer's purchases, without building that set: when most customers match it is every
    purchase (250,000 at a million operations), built before the first row is tested, while a
    newest-first walk of dead letters tests only the rows it takes to fill a page. The ids are
    compared as text, as before (a payload's purchase_id may be junk); the key only finds the
    row. The LIKE on the subject only spares rows that name nothing a lookup.
    """
    purchase_id = cast(Operation.payload["purchase_id"].as_string(), String)
    subject_key = func.substr(Operation.subject, 10)  # after "purchase:" or "customer:"
    purchase_subject = literal("purchase:", String) + cast(Purchase.id, String)
    customer_subject = literal("customer:", String) + cast(Customer.id, String)
    return [
        and_(
            purchase_id.is_not(None),
            # An email's subject names the purchase of its payload: tested once, by the subject.
            or_(Operation.subject.is_(None), Operation.subject != literal("purchase:", String) + purchase_id),
            _named_customer(
                pattern,
                Purchase.id == _key(purchase_id),
                cast(Purchase.id, String) == purchase_id,
                through_purchase=True,
            ),
        ),
        and_(
            Operation.subject.like("purchase:%"),
            _named_customer(
                pattern, Purchase.id == _key(subject_key), purchase_subject == Operation.subject, through_purchase=True
            ),
        ),
        and_(
            Operation.subject.like("customer:%"),
            _named_customer(
                pattern, Customer.id == _key(subject_key), customer_subject == Operation.subject, through_purchase=False
            ),
        ),
    ]
