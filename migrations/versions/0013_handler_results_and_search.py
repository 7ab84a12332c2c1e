"""handler results on operations; indexes for the operations explorer

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

``operations.result`` keeps the short summary a handler returns (bounded to 2 KB by
webapp/domain/results.py). The explorer lists any state or name newest first, keyset-paginated
on (created_at, id): one index each, so a page is a walk of an index range, never a sort.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_operations_state_created_at_id": ["state", "created_at", "id"],
    "ix_operations_name_created_at_id": ["name", "created_at", "id"],
}


def upgrade():
    op.add_column("operations", sa.Column("result", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")))
    for name, columns in INDEXES.items():
        op.create_index(name, "operations", columns, unique=False)


def downgrade():
    for name in INDEXES:
        op.drop_index(name, table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("result")
