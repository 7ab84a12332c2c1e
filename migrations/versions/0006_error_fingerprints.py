"""error fingerprints on operations, and partial indexes over dead operations

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

"""

import sqlalchemy as sa
from alembic import op

from webapp.domain.fingerprints import fingerprint_of

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEAD_ONLY = sa.text("state = 'dead'")
BACKFILL_BATCH = 5000


def upgrade():
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_fingerprint", sa.String(length=16), nullable=True))
    _backfill(op.get_bind())
    op.create_index(
        "ix_operations_dead_kind_dead_at",
        "operations",
        ["kind", "dead_at"],
        unique=False,
        sqlite_where=DEAD_ONLY,
        postgresql_where=DEAD_ONLY,
    )
    op.create_index(
        "ix_operations_dead_name_dead_at",
        "operations",
        ["name", "dead_at"],
        unique=False,
        sqlite_where=DEAD_ONLY,
        postgresql_where=DEAD_ONLY,
    )
    op.create_index(
        "ix_operations_dead_fingerprint",
        "operations",
        ["error_fingerprint", "dead_at", "resolved_at", "name", "kind"],
        unique=False,
        sqlite_where=DEAD_ONLY,
        postgresql_where=DEAD_ONLY,
    )


def _backfill(connection) -> None:
    """Fingerprint every operation that already has an error, in id-ordered batches."""
    operations = sa.table(
        "operations",
        sa.column("id"),
        sa.column("error_class"),
        sa.column("error_message"),
        sa.column("error_fingerprint"),
    )
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(operations.c.id, operations.c.error_class, operations.c.error_message)
            .where(
                operations.c.id > last_id,
                sa.or_(operations.c.error_class.is_not(None), operations.c.error_message.is_not(None)),
            )
            .order_by(operations.c.id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            operations.update()
            .where(operations.c.id == sa.bindparam("row_id"))
            .values(error_fingerprint=sa.bindparam("fingerprint")),
            [{"row_id": row.id, "fingerprint": fingerprint_of(row.error_class, row.error_message)} for row in rows],
        )
        last_id = rows[-1].id


def downgrade():
    op.drop_index("ix_operations_dead_fingerprint", table_name="operations")
    op.drop_index("ix_operations_dead_name_dead_at", table_name="operations")
    op.drop_index("ix_operations_dead_kind_dead_at", table_name="operations")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_column("error_fingerprint")
