"""dead-letter and customer text search: trigram indexes of dead operations' text and customers

The failed-operations search (a substring of subject, key, error or recipient, or of the
customer's email) read every dead row at a million operations (~30,000, 100-250 ms), and the
explorer's search by a customer's name read every customer. Dead
operations' text is now indexed (webapp/services/console/search_index.py), for dead rows only,
so the engine's transitions of live operations write nothing more:

- PostgreSQL: ``pg_trgm`` GIN indexes (partial on ``state = 'dead'``; customers' lower(email)
  and lower(name)).
  When the extension cannot be created (no privilege) they are skipped and the search still
  answers, reading the dead rows as before.
- SQLite: FTS5 trigram tables of dead operations and of customers, kept by triggers.

Both: an index of a dead operation's payload ``purchase_id`` (the customer arm of the search),
and a covering index of dead operations in the Issues view's group order (fingerprint, name),
which SQLite grouped by reading ~30,000 rows from the table (45-460 ms).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02

"""

import logging

import sqlalchemy as sa
from alembic import op

from webapp.services.console.search_index import (
    POSTGRES_CUSTOMER_INDEXES,
    POSTGRES_INDEX,
    POSTGRES_TEXT,
    PURCHASE_ID,
    PURCHASE_ID_INDEX,
    SQLITE_CUSTOMER_TABLE,
    SQLITE_CUSTOMER_TRIGGERS,
    SQLITE_TABLE,
    SQLITE_TRIGGERS,
    sqlite_text,
)

# revision identifiers, used by Alembic.
revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


ISSUES_INDEX = "ix_operations_dead_issues"
ISSUES_COLUMNS = ["state", "error_fingerprint", "name", "kind", "resolved_at", "dead_at"]
DEAD_ONLY = sa.text("state = 'dead'")


def upgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_index(ISSUES_INDEX, "operations", ISSUES_COLUMNS, sqlite_where=DEAD_ONLY, postgresql_where=DEAD_ONLY)
    purchase_id = PURCHASE_ID[dialect].format(table="")
    op.execute(f"CREATE INDEX {PURCHASE_ID_INDEX} ON operations ({purchase_id}) WHERE state = 'dead'")
    if dialect == "postgresql":
        if _trigram_extension(bind):
            op.execute(
                f"CREATE INDEX {POSTGRES_INDEX} ON operations USING gin (({POSTGRES_TEXT}) gin_trgm_ops) "
                "WHERE state = 'dead'"
            )
            for column, name in POSTGRES_CUSTOMER_INDEXES.items():
                op.execute(f"CREATE INDEX {name} ON customers USING gin (lower({column}) gin_trgm_ops)")
        return
    insert, update, delete = SQLITE_TRIGGERS
    op.execute(f"CREATE VIRTUAL TABLE {SQLITE_TABLE} USING fts5(body, tokenize = 'trigram')")
    op.execute(
        f"INSERT INTO {SQLITE_TABLE} (rowid, body) "
        f"SELECT id, {sqlite_text('operations')} FROM operations WHERE state = 'dead'"
    )
    op.execute(
        f"CREATE TRIGGER {insert} AFTER INSERT ON operations WHEN new.state = 'dead' BEGIN "
        f"INSERT INTO {SQLITE_TABLE} (rowid, body) VALUES (new.id, {sqlite_text('new')}); END"
    )
    op.execute(
        f"CREATE TRIGGER {update} AFTER UPDATE OF state, subject, idempotency_key, error_message, payload "
        "ON operations WHEN old.state = 'dead' OR new.state = 'dead' BEGIN "
        f"DELETE FROM {SQLITE_TABLE} WHERE rowid = old.id; "
        f"INSERT INTO {SQLITE_TABLE} (rowid, body) SELECT new.id, {sqlite_text('new')} WHERE new.state = 'dead'; END"
    )
    op.execute(
        f"CREATE TRIGGER {delete} AFTER DELETE ON operations WHEN old.state = 'dead' BEGIN "
        f"DELETE FROM {SQLITE_TABLE} WHERE rowid = old.id; END"
    )
    _sqlite_customer_search()


def _sqlite_customer_search():
    """Customers' lower-cased email and name in an FTS5 trigram table (rowid: the customer's id)."""
    insert, update, delete = SQLITE_CUSTOMER_TRIGGERS
    table = SQLITE_CUSTOMER_TABLE
    op.execute(f"CREATE VIRTUAL TABLE {table} USING fts5(email, name, tokenize = 'trigram')")
    op.execute(f"INSERT INTO {table} (rowid, email, name) SELECT id, lower(email), lower(name) FROM customers")
    op.execute(
        f"CREATE TRIGGER {insert} AFTER INSERT ON customers BEGIN "
        f"INSERT INTO {table} (rowid, email, name) VALUES (new.id, lower(new.email), lower(new.name)); END"
    )
    op.execute(
        f"CREATE TRIGGER {update} AFTER UPDATE OF id, email, name ON customers BEGIN "
        f"DELETE FROM {table} WHERE rowid = old.id; "
        f"INSERT INTO {table} (rowid, email, name) VALUES (new.id, lower(new.email), lower(new.name)); END"
    )
    op.execute(f"CREATE TRIGGER {delete} AFTER DELETE ON customers BEGIN DELETE FROM {table} WHERE rowid = old.id; END")


def _trigram_extension(bind) -> bool:
    """Create ``pg_trgm`` if it is not there; False (and a warning) when this role may not."""
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm unavailable (%s): the dead-letter search stays unindexed", exc.orig)
        return False
    return True


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name in POSTGRES_CUSTOMER_INDEXES.values():
            op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"DROP INDEX IF EXISTS {POSTGRES_INDEX}")
    else:
        for trigger in SQLITE_TRIGGERS + SQLITE_CUSTOMER_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute(f"DROP TABLE IF EXISTS {SQLITE_TABLE}")
        op.execute(f"DROP TABLE IF EXISTS {SQLITE_CUSTOMER_TABLE}")
    op.execute(f"DROP INDEX IF EXISTS {PURCHASE_ID_INDEX}")
    op.drop_index(ISSUES_INDEX, table_name="operations")
